"""The interactive API docs, `/docs` (Swagger UI) and `/redoc`: FastAPI's pages, with their
scripts and stylesheet pinned to one release on the CDN and checked by the browser
(Subresource Integrity). FastAPI's defaults load `swagger-ui-dist@5` and `redoc@2`, whatever
the CDN serves under those names today, into a page on the API's own origin whose
*Authorize* form takes a username and password; a script that does not match its digest
is not run.

To move to another release: take the files from the npm package (`npm pack
swagger-ui-dist@X`, for instance) and put `sha384-` + base64 of each file's SHA-384 below
(`openssl dgst -sha384 -binary FILE | base64`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

CDN = "https://cdn.jsdelivr.net/npm"
SWAGGER_JS = f"{CDN}/swagger-ui-dist@5.36.0/swagger-ui-bundle.js"
SWAGGER_CSS = f"{CDN}/swagger-ui-dist@5.36.0/swagger-ui.css"
REDOC_JS = f"{CDN}/redoc@2.5.4/bundles/redoc.standalone.js"
INTEGRITY = {
    SWAGGER_JS: "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+",
    SWAGGER_CSS: "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc",
    REDOC_JS: "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5",
}
DOCS = "/docs"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
REDOC = "/redoc"


def _checked(page: HTMLResponse) -> HTMLResponse:
    """The page with an `integrity` (and `crossorigin`, which it needs) on every asset."""
    html = bytes(page.body).decode()
    for url, digest in INTEGRITY.items():
        checked = f'"{url}" integrity="{digest}" crossorigin="anonymous"'
        html = html.replace(f'"{url}"', checked)
    return HTMLResponse(html)


def install(app: FastAPI) -> None:
    """`/docs`, its OAuth2 redirect page and `/redoc` (the app is made with FastAPI's own
    turned off)."""
    title = app.title

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=root(request) + str(app.openapi_url),
            title=f"{title} - Swagger UI",
            swagger_js_url=SWAGGER_JS,
            swagger_css_url=SWAGGER_CSS,
            oauth2_redirect_url=root(request) + OAUTH2_REDIRECT,
        )
        return _checked(page)

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=root(request) + str(app.openapi_url),
            title=f"{title} - ReDoc",
            redoc_js_url=REDOC_JS,
            with_google_fonts=False,
        )
        return _checked(page)

    app.add_route(DOCS, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT, oauth2_redirect, include_in_schema=False)
    app.add_route(REDOC, redoc, include_in_schema=False)
