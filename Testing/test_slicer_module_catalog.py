"""The extension's metadata: the top ``CMakeLists.txt`` and the Extensions Index catalog entry ``MedSynth.json``.

The Extensions Manager lists an extension from its entry in Slicer's ExtensionsIndex repository,
validated there against ``slicer-extension-catalog-entry-schema-v1.0.2.json``; the extension build
reads the ``EXTENSION_*`` variables. These tests check the entry against the schema's rules, and
that the entry, the CMake metadata and the module's help agree and point at files that exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_PY = REPO / "MedSynth" / "MedSynth.py"


def test_extension_cmake_has_the_metadata_and_includes():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(MedSynth\)", text, flags=re.M)
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({variable} "[^"]+"\)', text), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    steps = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedSynth)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions), "extension CMake steps out of order"
    # The icon and screenshot the URLs point at exist in the repository.
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = re.search(rf'set\({variable} "([^"]+)"\)', text).group(1)
        relative = url.split("/main/", 1)[1]
        assert (REPO / relative).is_file(), f"{variable} points at a missing file {relative}"


# ---- the Extensions Index catalog entry ----------------------------------------------------------
#: Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json, as rules: key -> accepted type.
CATALOG_SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
CATALOG_KEYS = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
                "tier": int}


def _catalog_problems(entry: dict) -> list[str]:
    """What makes ``entry`` invalid under the v1.0.2 catalog schema (empty when valid)."""
    problems = [f"missing required {key!r}" for key in CATALOG_REQUIRED if key not in entry]
    problems += [f"{key!r} is not allowed (additionalProperties: false)" for key in entry if key not in CATALOG_KEYS]
    for key, value in entry.items():
        wanted = CATALOG_KEYS.get(key)
        if wanted is not None and (not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))):
            problems.append(f"{key!r} must be a {wanted.__name__}, got {value!r}")
    if entry.get("scm_type", "git") not in ("git", "local"):
        problems.append(f"scm_type must be git or local, got {entry['scm_type']!r}")
    if isinstance(entry.get("tier"), int) and not 1 <= entry["tier"] <= 5:
        problems.append(f"tier must be 1-5, got {entry['tier']}")
    if not all(isinstance(d, str) for d in entry.get("build_dependencies") or []):
        problems.append("build_dependencies must list extension names")
    return problems


def _cmake_value(variable: str) -> str:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return re.search(rf'set\({variable} "([^"]*)"\)', text).group(1)


def test_catalog_entry_follows_slicers_schema():
    entry = json.loads((REPO / "MedSynth.json").read_text(encoding="utf-8"))
    assert entry["$schema"] == CATALOG_SCHEMA
    assert _catalog_problems(entry) == []
    # The checker itself refuses what the schema refuses.
    assert len(_catalog_problems({"category": "Filtering", "tier": 0, "homepage": "x", "enabled": "yes"})) == 5


def test_catalog_entry_agrees_with_the_extension_cmake():
    entry = json.loads((REPO / "MedSynth.json").read_text(encoding="utf-8"))
    # The index names the extension after the file: the CMake project name.
    assert re.search(r"^project\((\w+)\)", (REPO / "CMakeLists.txt").read_text(), flags=re.M).group(1) == "MedSynth"
    assert entry["category"] == _cmake_value("EXTENSION_CATEGORY")
    depends = _cmake_value("EXTENSION_DEPENDS")
    assert entry.get("build_dependencies", []) == ([] if depends == "NA" else depends.split())
    assert entry.get("scm_type", "git") == "git" and entry["scm_url"].endswith(".git")


def test_extension_urls_point_into_the_catalogs_repository():
    entry = json.loads((REPO / "MedSynth.json").read_text(encoding="utf-8"))
    repository = entry["scm_url"].removesuffix(".git")
    slug, revision = repository.removeprefix("https://github.com/"), entry.get("scm_revision", "main")
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", slug), entry["scm_url"]
    homepage = _cmake_value("EXTENSION_HOMEPAGE")
    assert homepage == f"{repository}/blob/{revision}/docs/slicer.md" and (REPO / "docs" / "slicer.md").is_file()
    assert f'DOCS_URL = "{homepage}"' in MODULE_PY.read_text(encoding="utf-8"), "the module's help links elsewhere"
    raw = f"https://raw.githubusercontent.com/{slug}/{revision}/"
    for url in [_cmake_value("EXTENSION_ICONURL"), *_cmake_value("EXTENSION_SCREENSHOTURLS").split()]:
        assert url.startswith(raw), f"{url} is not in {raw}"
        assert (REPO / url.removeprefix(raw)).is_file(), f"{url} names a file the repository does not have"
