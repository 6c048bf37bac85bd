"""The API's own description: the OpenAPI document and a page that renders it.

The page's script and style sheet come from the installed ``swagger-ui-py``
package and are served by this app, so the page works with no network.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from aiohttp import web

from api.auth import PUBLIC_PATHS
from api.openapi import ASSET_PATH, DOCS_PATH, OPENAPI_PATH, documented, openapi_document

# The files the page loads; nothing else of the package is served.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>imagesvc API</title>
  <link rel="stylesheet" href="{docs}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{docs}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{docs}/swagger-ui-bundle.js"></script>
  <script src="{docs}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{openapi}",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      validatorUrl: null
    }});
  </script>
</body>
</html>
"""

routes = web.RouteTableDef()


@cache
def asset_dir() -> Path:
    """Where ``swagger-ui-py`` keeps its static files (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@routes.get(OPENAPI_PATH)
@documented(content_type="application/json")
async def openapi_json(request: web.Request) -> web.Response:
    """This document: the OpenAPI 3.1 description of the API."""
    return web.json_response(openapi_document(request.app, PUBLIC_PATHS))


@routes.get(DOCS_PATH)
@documented(content_type="text/html")
async def docs_page(request: web.Request) -> web.Response:
    """A page to read and try the API, rendered from the OpenAPI document."""
    page = PAGE.format(docs=DOCS_PATH, openapi=OPENAPI_PATH)
    return web.Response(text=page, content_type="text/html")


@routes.get(ASSET_PATH)
@documented(content_type="application/octet-stream")
async def docs_asset(request: web.Request) -> web.FileResponse:
    """A script, style sheet or icon of the documentation page."""
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    headers = {"Content-Type": ASSETS[name], "Cache-Control": "public, max-age=86400"}
    return web.FileResponse(asset_dir() / name, headers=headers)
