"""cxrlake review on Databricks Apps: installs the cxrlake wheel of this deployment, then serves
the same review app as `cxrlake review`, against the Unity Catalog tables through the SQL
warehouse bound to the app.

A bundle cannot hand an app its wheel artifact directly (databricks/cli issue 5094), so the app
takes the newest ``cxrlake-*.whl`` from the ``models.libraries`` volume, where the ``setup`` job
copies the deployed wheel. The reviewer is the ``X-Forwarded-Email`` of each request
(https://docs.databricks.com/aws/en/dev-tools/databricks-apps/http-headers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def volume_path(value: str) -> str:
    """``/Volumes/c/s/v`` from a volume resource value (a path or ``c.s.v``)."""
    value = value.strip()
    if value.startswith("/Volumes/"):
        return value.rstrip("/")
    return "/Volumes/" + "/".join(value.split("."))


def install_wheel() -> None:
    from databricks.sdk import WorkspaceClient

    folder = volume_path(os.environ["CXRLAKE_LIBRARIES_VOLUME"])
    client = WorkspaceClient()
    wheels = sorted(
        entry.path
        for entry in client.files.list_directory_contents(folder)
        if entry.name and entry.name.startswith("cxrlake-") and entry.name.endswith(".whl")
    )
    if not wheels:
        raise SystemExit(f"no cxrlake wheel in {folder}: run the bundle's setup job first")
    local = os.path.join(tempfile.mkdtemp(), os.path.basename(wheels[-1]))
    with open(local, "wb") as f:
        f.write(client.files.download(wheels[-1]).contents.read())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", local], check=True)


def main() -> None:
    try:
        import cxrlake.review.server  # noqa: F401 - already installed
    except ImportError:
        install_wheel()
    from cxrlake.review.server import make_server
    from cxrlake.review.warehouse import WarehouseNames, WarehouseStore

    store = WarehouseStore(WarehouseNames.from_env())
    port = int(os.environ.get("DATABRICKS_APP_PORT", "8000"))
    server = make_server(store, "0.0.0.0", port, trust_proxy_headers=True)
    print(f"cxrlake review: serving {store.names.feedback} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
