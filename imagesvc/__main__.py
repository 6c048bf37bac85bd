from imagesvc.cli import main

raise SystemExit(main())
