"""imagesvc: the composition root — settings and the operator's command line."""
