"""Build the `dvc plots show` page template with Vega, Vega-Lite and vega-embed inlined.

DVC's default page loads the three scripts from a CDN, so offline it is blank. This template
(``.dvc/config``: ``plots.html_template``) carries them inline, each after its licence (BSD-3:
the copyright notice travels with the code), and has no ``{scripts}`` placeholder, so DVC's CDN
tags are not added. The versions are the ones dvc-render's own page asks for. Rebuild with the
npm registry's tarballs::

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2   # in an empty folder
    uv run --frozen python tools/offline_plots_template.py FOLDER
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

#: (npm package, version, its minified browser build inside the tarball), in load order.
SCRIPTS = (("vega", "5.20.2", "package/build/vega.min.js"),
           ("vega-lite", "5.2.0", "package/build/vega-lite.min.js"),
           ("vega-embed", "6.18.2", "package/build/vega-embed.min.js"))
TEMPLATE = Path(__file__).resolve().parents[1] / ".dvc" / "offline_plots.html"
#: dvc-render's placeholders (dvc_render/html.py); ``{scripts}`` is left out on purpose.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot (offline: Vega, Vega-Lite and vega-embed inlined)</title>
{inlined}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def member_text(tarball: Path, name: str) -> str:
    with tarfile.open(tarball) as archive:
        member = archive.extractfile(name)
        if member is None:
            raise SystemExit(f"{tarball} has no {name}")
        return member.read().decode("utf-8")


def inline_script(folder: Path, package: str, version: str, build: str) -> str:
    """One ``<script>``: the package's LICENSE as a comment, then its minified build."""
    tarball = folder / f"{package}-{version}.tgz"
    code = member_text(tarball, build)
    for forbidden in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if forbidden in code:
            raise SystemExit(f"{tarball}: {build} contains {forbidden!r}; it cannot be inlined")
    licence = member_text(tarball, "package/LICENSE").replace("*/", "* /")
    return (f"    <!-- {package}@{version} (npm), {build} -->\n    <script>\n/*! {package}@"
            f"{version}\n{licence}*/\n{code}\n    </script>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where `npm pack` wrote the three .tgz files")
    args = parser.parse_args()
    inlined = "\n".join(inline_script(args.folder, *script) for script in SCRIPTS)
    TEMPLATE.write_text(PAGE.format(inlined=inlined), encoding="utf-8")


if __name__ == "__main__":
    main()
