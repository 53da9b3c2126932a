"""Checks of the Slicer module that need no Slicer: sources, .ui, parameters, CMake lists, imports.

3D Slicer is not available in CI, so these tests read ``MedSynth/MedSynth.py`` and its ``.ui``
as text and XML and check what would otherwise only fail when a user opens the module: a widget
the code uses that the panel lacks (or has with another class), a parameter with no widget, a file
missing from the package, Slicer imported by the library.
"""

from __future__ import annotations

import ast
import py_compile
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedSynth"
MODULE_PY = MODULE_DIR / "MedSynth.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSynth.ui"
LIB_DIR = REPO / "MedSynthLib"

#: Modules that exist only inside the Slicer application.
SLICER_ONLY = {"slicer", "qt", "ctk", "mrml", "vtkSlicer", "qSlicer", "qMRML", "PythonQt", "__main__", "PyTorchUtils"}

# Attributes and signals the module may use, per widget class of the .ui (what Qt/CTK/Slicer expose
# to Python). A use outside its class's list means the code and the panel disagree.
_WIDGET = {"enabled", "toolTip", "setVisible", "visible", "setToolTip", "blockSignals", "connect"}
CAPABILITIES = {
    "QPushButton": _WIDGET | {"text", "checked", "clicked(bool)", "clicked()"},
    "QLabel": _WIDGET | {"text", "wordWrap"},
    "QProgressBar": _WIDGET | {"value", "maximum", "minimum"},
    "QListWidget": _WIDGET | {"clear", "addItem", "count", "itemDoubleClicked(QListWidgetItem*)"},
    "QTabWidget": _WIDGET | {"indexOf", "setTabEnabled", "currentIndex", "count", "currentChanged(int)"},
    "QComboBox": _WIDGET | {"currentIndex", "currentText", "addItem", "clear", "findData", "currentData"},
    "ctkComboBox": _WIDGET | {"currentIndex", "currentText", "addItem", "clear", "findData", "currentData", "count"},
    "QSpinBox": _WIDGET | {"value", "minimum", "maximum"},
    "QDoubleSpinBox": _WIDGET | {"value", "minimum", "maximum"},
    "ctkSliderWidget": _WIDGET | {"value", "minimum", "maximum"},
    "QLineEdit": _WIDGET | {"text", "placeholderText"},
    "QCheckBox": _WIDGET | {"checked", "text"},
    "ctkPathLineEdit": _WIDGET | {"currentPath"},
    "ctkCollapsibleButton": _WIDGET | {"collapsed", "text"},
    "qMRMLNodeComboBox": _WIDGET | {"currentNode", "setCurrentNode", "setMRMLScene"},
    "qSlicerMarkupsPlaceWidget": _WIDGET | {"setCurrentNode", "setMRMLScene", "placeModeEnabled"},
    "QWidget": _WIDGET,
}

#: Which widget classes Slicer's parameter node wrapper (or our own connectors) binds to which type.
BINDABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"ctkSliderWidget", "QDoubleSpinBox"},
    "str+Choice": {"QComboBox", "QTabWidget"},
    "str": {"QLineEdit", "ctkComboBox", "QTextEdit"},
    "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}


# ---- helpers -----------------------------------------------------------------------------------
def _module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"))


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _ui_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = list(prop)[0]
            if child.tag == "stringlist":
                return [s.text for s in child.findall("string")]
            return child.text
    return None


def _wrapper_fields() -> dict[str, tuple[ast.expr, object]]:
    """name -> (annotation node, default) of the @parameterNodeWrapper class."""
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    default = ast.literal_eval(item.value) if item.value is not None else None
                    fields[item.target.id] = (item.annotation, default)
            return fields
    raise AssertionError("MedSynth.py has no @parameterNodeWrapper class")


def _arguments(args: list) -> list:
    """Literal arguments, and ``*panel_settings.slider_range(...)`` (a range read from the library) evaluated."""
    values = []
    for arg in args:
        if isinstance(arg, ast.Starred):
            sys.path.insert(0, str(MODULE_DIR))
            try:
                from MedSynthSlicerLib import panel_settings
            finally:
                sys.path.remove(str(MODULE_DIR))
            values += list(eval(compile(ast.Expression(arg.value), "<range>", "eval"), {"panel_settings": panel_settings}))
        else:
            values.append(ast.literal_eval(arg))
    return values


def _kind(annotation: ast.expr) -> tuple[str, dict]:
    """('bool'|'int'|'float'|'str'|'str+Choice'|'pathlib.Path'|'node', extras) of an annotation."""
    extras: dict = {}
    base = annotation
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        elements = annotation.slice.elts
        base = elements[0]
        for meta in elements[1:]:
            if isinstance(meta, ast.Call):
                extras[ast.unparse(meta.func)] = _arguments(meta.args)
    name = ast.unparse(base)
    if name.startswith("vtkMRML"):
        return "node", {"class": name}
    if name == "str" and "Choice" in extras:
        return "str+Choice", extras
    return name, extras


def _lists_in_cmake(text: str) -> dict[str, list[str]]:
    lists = {}
    for match in re.finditer(r"set\((\w+)\s*\n(.*?)\)", text, flags=re.S):
        items = [line.split("#", 1)[0].strip() for line in match.group(2).splitlines()]
        lists[match.group(1)] = [i.replace("${MODULE_NAME}", "MedSynth") for i in items if i]
    return lists


def _files(root: Path, pattern: str) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    )


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


# ---- the module compiles and keeps Slicer out of the library -----------------------------------
def test_module_and_helpers_compile(tmp_path):
    for path in [MODULE_PY, *sorted((MODULE_DIR / "MedSynthSlicerLib").glob("*.py"))]:
        py_compile.compile(str(path), cfile=str(tmp_path / (path.name + "c")), doraise=True)


def test_only_the_module_file_sits_in_the_module_folder():
    # Slicer loads every .py directly in a module folder as a module of its own.
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["MedSynth.py"]


@pytest.mark.parametrize("package", ["MedSynthLib", "MedSynth/MedSynthSlicerLib"])
def test_library_and_helpers_import_no_slicer_module(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if top in SLICER_ONLY or top.startswith(("qSlicer", "qMRML", "vtkSlicer", "vtkMRML")) or name == "vtk.mrml":
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_module_imports_nothing_heavy_at_import_time():
    """torch, MONAI and the tasks are imported at first use only (dependencies may be missing)."""
    heavy = {"torch", "monai", "skimage", "MedSynthLib.tasks", "MedSynthLib.engine", "MedSynthLib.models"}
    top_level = set()
    for node in _module_tree().body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
    assert not {m for m in top_level if any(m == h or m.startswith(h + ".") for h in heavy)}
    # The helper modules imported at the top must not pull torch in either.
    import subprocess

    code = ("import sys; sys.path.insert(0, 'MedSynth'); "
            "import MedSynthSlicerLib.dependencies, MedSynthSlicerLib.history, MedSynthSlicerLib.nodes, "
            "MedSynthSlicerLib.task_request, MedSynthSlicerLib.task_runs, MedSynthSlicerLib.panel_settings, "
            "MedSynthSlicerLib.result_line, MedSynthSlicerLib.model_choice, MedSynthSlicerLib.undo, MedSynthSlicerLib.worker, MedSynthSlicerLib.devices, "
            "MedSynthSlicerLib.choices; "
            "print('torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_module_follows_the_template_classes():
    classes = {n.name: n for n in _module_tree().body if isinstance(n, ast.ClassDef)}
    expected = {
        "MedSynth": "ScriptedLoadableModule",
        "MedSynthWidget": "ScriptedLoadableModuleWidget",
        "MedSynthLogic": "ScriptedLoadableModuleLogic",
        "MedSynthTest": "ScriptedLoadableModuleTest",
    }
    for name, base in expected.items():
        assert name in classes, f"missing class {name}"
        assert base in [ast.unparse(b) for b in classes[name].bases]
    assert "VTKObservationMixin" in [ast.unparse(b) for b in classes["MedSynthWidget"].bases]
    order = [n for n in classes if n in expected]
    assert order == list(expected), f"Slicer's class order is Module, Widget, Logic, Test; got {order}"
    text = MODULE_PY.read_text(encoding="utf-8")
    for needle in ("slicer.util.loadUI", "slicer.util.childWidgetVariables", "setMRMLScene(slicer.mrmlScene)",
                   "StartCloseEvent", "EndCloseEvent", "tryWithErrorDisplay", "connectGui", "disconnectGui",
                   "self.parent.helpText", "self.parent.acknowledgementText", "self.parent.contributors"):
        assert needle in text, needle


def test_self_test_runs_every_task_through_the_logic():
    test_class = next(n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == "MedSynthTest")
    methods = {n.name: n for n in test_class.body if isinstance(n, ast.FunctionDef)}
    run_test = ast.unparse(methods["runTest"])
    called = set(re.findall(r"self\.(test_\w+)\b", run_test))
    assert called == {m for m in methods if m.startswith("test_")}, "runTest must call every test_ method"
    bodies = " ".join(ast.unparse(methods[m]) for m in called)
    for task in ("'fill'", "'upsample'", "'lesion'", "'enhance'"):
        assert task in bodies, f"the self-test does not run {task}"
    assert "undo" in bodies and "matrixOf" in bodies and "cancel" in bodies
    assert "download" not in bodies.lower() and "urllib" not in bodies


# ---- the .ui and the code agree -----------------------------------------------------------------
def test_every_ui_widget_the_code_uses_exists_with_a_fitting_class():
    widgets = _ui_widgets()
    text = MODULE_PY.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", text))
    assert used, "the widget uses no self.ui widgets?"
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui widgets missing from MedSynth.ui: {missing}"
    problems = []
    for name, attribute in re.findall(r"self\.ui\.(\w+)\.(\w+)", text):
        cls = widgets[name].get("class")
        if cls not in CAPABILITIES:
            problems.append(f"{name}: unexpected class {cls}")
        elif attribute not in CAPABILITIES[cls]:
            problems.append(f"{name} is a {cls}, which has no {attribute!r}")
    for name, signal in re.findall(r"self\.ui\.(\w+)\.connect\(\"([^\"]+)\"", text):
        cls = widgets[name].get("class")
        if signal not in CAPABILITIES.get(cls, ()):
            problems.append(f"{name} is a {cls}, which has no signal {signal}")
    assert not problems, "\n".join(problems)


def test_every_task_has_its_tab():
    widgets = _ui_widgets()
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from MedSynthSlicerLib.task_request import TASKS
    finally:
        sys.path.remove(str(MODULE_DIR))
    tabs = {w.get("name") for w in widgets["taskTabWidget"].findall("widget")}
    for task in TASKS:
        assert f"{'fill' if task == 'upsample' else task}Tab" in tabs


def test_every_parameter_has_exactly_one_bound_widget_of_a_bindable_class():
    fields = _wrapper_fields()
    widgets = _ui_widgets()
    bound: dict[str, list[str]] = {}
    for name, widget in widgets.items():
        parameter = _ui_property(widget, "SlicerParameterName")
        if parameter:
            bound.setdefault(parameter, []).append(name)
    assert set(bound) == set(fields), (
        f"parameters without widget: {sorted(set(fields) - set(bound))}; "
        f"widgets naming no parameter: {sorted(set(bound) - set(fields))}"
    )
    problems = []
    for parameter, (annotation, default) in fields.items():
        if len(bound[parameter]) != 1:
            problems.append(f"{parameter} is bound to {bound[parameter]}")
            continue
        widget = widgets[bound[parameter][0]]
        cls = widget.get("class")
        kind, extras = _kind(annotation)
        if cls not in BINDABLE.get(kind, set()):
            problems.append(f"{parameter} ({kind}) is bound to a {cls}; bindable: {sorted(BINDABLE.get(kind, []))}")
        if kind == "node" and extras["class"] not in (_ui_property(widget, "nodeTypes") or []):
            problems.append(f"{parameter}: {widget.get('name')} does not list {extras['class']} in nodeTypes")
        if kind == "str+Choice" and default not in extras["Choice"][0]:
            problems.append(f"{parameter}: default {default!r} is not one of its choices")
        if kind == "str+Choice" and cls == "QTabWidget":
            pages = {w.get("name") for w in widget.findall("widget")}
            assert pages == {f"{c}Tab" for c in extras["Choice"][0]}, f"{parameter}: tabs {pages}"
        if "WithinRange" in extras:
            low, high = extras["WithinRange"]
            if not low <= default <= high:
                problems.append(f"{parameter}: default {default} outside [{low}, {high}]")
        if cls == "ctkSliderWidget" and "WithinRange" not in extras:
            problems.append(f"{parameter}: a ctkSliderWidget needs a WithinRange bound")
    assert not problems, "\n".join(problems)


def test_custom_connectors_cover_the_classes_slicer_does_not_bind():
    text = MODULE_PY.read_text(encoding="utf-8")
    assert "@parameterNodeGuiConnector\nclass CtkComboBoxToStrConnector" in text
    assert "@parameterNodeGuiConnector\nclass TabWidgetToStrConnector" in text
    assert "type(widget) == ctk.ctkComboBox" in text and "type(widget) == qt.QTabWidget" in text


def test_ui_is_a_designer_file_with_declared_custom_widgets():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("class").text == "MedSynth"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MedSynth"
    declared = {c.find("class").text for c in root.find("customwidgets")}
    qt_classes = {"QWidget", "QPushButton", "QLabel", "QProgressBar", "QListWidget", "QTabWidget", "QComboBox",
                  "QSpinBox", "QDoubleSpinBox", "QLineEdit", "QCheckBox"}
    for widget in root.iter("widget"):
        assert widget.get("class") in declared | qt_classes, f"{widget.get('name')}: undeclared {widget.get('class')}"
    # Every MRML widget gets the scene from the panel's mrmlSceneChanged signal.
    receivers = {c.find("receiver").text for c in root.find("connections")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class") in ("qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget")}
    assert mrml <= receivers, f"widgets without the scene: {sorted(mrml - receivers)}"


# ---- CMake: every file that must ship, nothing that does not exist --------------------------------
def _expected_block(name: str, files: list[str]) -> str:
    return f"set({name}\n" + "".join(f"  {f}\n" for f in files) + "  )"


def test_module_cmake_lists_every_file_that_ships():
    lists = _lists_in_cmake((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    scripts = _files(MODULE_DIR, "*.py")
    resources = sorted(p for p in _files(MODULE_DIR, "*") if p.startswith("Resources/"))
    assert lists["MODULE_PYTHON_SCRIPTS"] == scripts, "update MedSynth/CMakeLists.txt:\n" + _expected_block(
        "MODULE_PYTHON_SCRIPTS", scripts)
    assert sorted(lists["MODULE_PYTHON_RESOURCES"]) == resources, "update MedSynth/CMakeLists.txt:\n" + _expected_block(
        "MODULE_PYTHON_RESOURCES", resources)
    assert "Resources/UI/MedSynth.ui" in resources and "Resources/Icons/MedSynth.png" in resources
    assert "Resources/requirements.txt" in resources


def test_module_cmake_packages_every_medsynthlib_file():
    lists = _lists_in_cmake((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    scripts = _files(LIB_DIR, "*.py")
    bundled = [f for f in _files(LIB_DIR, "*") if f.startswith("models/bundled/") and f.endswith((".json", ".safetensors"))]
    assert lists["MEDSYNTHLIB_PYTHON_SCRIPTS"] == scripts, (
        "a MedSynthLib file was added or removed: update MedSynth/CMakeLists.txt:\n"
        + _expected_block("MEDSYNTHLIB_PYTHON_SCRIPTS", scripts))
    assert lists.get("MEDSYNTHLIB_PYTHON_RESOURCES", []) == bundled, (
        "bundled model packages changed: update MedSynth/CMakeLists.txt:\n"
        + _expected_block("MEDSYNTHLIB_PYTHON_RESOURCES", bundled))


def test_module_cmake_builds_the_module_library_and_self_test():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s*SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}"
                     r"\s*RESOURCES \$\{MODULE_PYTHON_RESOURCES\}", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert re.search(r"ctkMacroCompilePythonScript\(\s*TARGET_NAME MedSynthLib", text)
    assert "SOURCE_DIR ${MEDSYNTHLIB_SOURCE_DIR}" in text
    assert "${CMAKE_CURRENT_SOURCE_DIR}/../MedSynthLib" in text
    assert "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/MedSynthLib" in text


# ---- dependencies ---------------------------------------------------------------------------------
def test_requirements_never_name_slicers_own_packages_and_match_pyproject():
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from MedSynthSlicerLib import dependencies
    finally:
        sys.path.remove(str(MODULE_DIR))
    path = MODULE_DIR / "Resources" / "requirements.txt"
    raw = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    names = {dependencies.requirement_name(line) for line in raw if line}
    assert not names & set(dependencies.PROTECTED)
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {dependencies.requirement_name(d) for d in project["dependencies"]} - set(dependencies.PROTECTED)
    assert names == wanted, f"requirements.txt {sorted(names)} vs pyproject {sorted(wanted)}"
    assert all(">=" in line for line in raw if line), "use >= requirements, never pins"


def test_slider_and_spin_ranges_are_the_librarys():
    """Every bound slider or spin box takes its range from the library at start-up (panel_knobs), none from the
    .ui; a parameter bound (WithinRange, which Slicer's slider connector needs) is that same range."""
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from MedSynthSlicerLib import panel_settings
    finally:
        sys.path.remove(str(MODULE_DIR))
    offers = panel_settings.panel_knobs()
    fields = _wrapper_fields()
    problems = []
    for name, widget in _ui_widgets().items():
        parameter = _ui_property(widget, "SlicerParameterName")
        if not parameter or widget.get("class") not in ("ctkSliderWidget", "QSpinBox", "QDoubleSpinBox"):
            continue
        if name not in offers:
            problems.append(f"{name}: a bound number widget that shows no library option (add it to PANEL_KNOBS)")
            continue
        if _ui_property(widget, "minimum") is not None or _ui_property(widget, "maximum") is not None:
            problems.append(f"{name}: the .ui copies a range; the library's is set at start-up")
        kind, extras = _kind(fields[parameter][0])
        if "WithinRange" in extras and tuple(map(float, extras["WithinRange"])) != (offers[name]["low"], offers[name]["high"]):
            problems.append(f"{name}: {parameter} is WithinRange{tuple(extras['WithinRange'])}, the library's range is "
                            f"({offers[name]['low']}, {offers[name]['high']})")
    assert not problems, "\n".join(problems)


# ---- the panel picture ------------------------------------------------------------------------------
def _render_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_panel", REPO / "Resources" / "Screenshots" / "render_panel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_placeholder_ui_has_only_plain_qt_classes_and_keeps_every_bound_widget():
    render_panel = _render_module()
    root = ET.fromstring(render_panel.placeholder_ui(1))
    classes = {w.get("class") for w in root.iter("widget")}
    assert not {c for c in classes if c.startswith(("ctk", "qMRML", "qSlicer"))}, classes
    names = {w.get("name") for w in root.iter("widget")}
    bound = {n for n, w in _ui_widgets().items() if _ui_property(w, "SlicerParameterName")}
    assert bound <= names
    assert render_panel.wrapper_choices()["outputMode"] == ["new volume", "in place"]


def test_panel_picture_shows_the_library_ranges_and_the_parameter_defaults():
    render_panel = _render_module()
    offers = render_panel.panel_offers()
    root = ET.fromstring(render_panel.placeholder_ui(2, offers))
    texts = {w.get("name"): _ui_property(w, "text") for w in root.iter("widget")}
    for name, offer in offers["knobs"].items():
        if _ui_widgets()[name].get("class") == "ctkSliderWidget":
            decimals = int(_ui_property(_ui_widgets()[name], "decimals"))
            assert f"in [{offer['low']:.{decimals}f}, {offer['high']:.{decimals}f}]" in texts[name], texts[name]
    assert offers["defaults"]["biasShrink"] == offers["knobs"]["biasShrinkSpinBox"]["default"]
    assert [value for _, value in offers["lists"]["presets"]][0] == "auto"


def test_panel_picture_was_regenerated_after_its_sources_changed(monkeypatch):
    """The picture records the SHA-256 of what it is drawn from; a changed .ui, library offer, parameter
    default or render script without a new picture fails here. Computing the hash needs no Qt."""
    monkeypatch.setitem(sys.modules, "PyQt5", None)  # any Qt import fails
    render_panel = _render_module()
    recorded_path = render_panel.record_path(render_panel.DEFAULT_OUTPUT)
    command = "run python Resources/Screenshots/render_panel.py (QT_QPA_PLATFORM=offscreen, PyQt5 from the dev extra)"
    assert recorded_path.is_file(), f"{recorded_path.name} is missing: {command}"
    import json

    recorded = json.loads(recorded_path.read_text(encoding="utf-8"))
    current = render_panel.sources_record()
    changed = [part for part, digest in current["parts"].items() if recorded.get("parts", {}).get(part) != digest]
    assert recorded.get("sha256") == current["sha256"], (
        f"the panel changed ({'; '.join(changed) or 'the record'}) since panel.png was drawn: {command}")


def test_render_panel_draws_the_three_task_tabs(tmp_path):
    import os
    import subprocess

    pytest.importorskip("PyQt5")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    probe = subprocess.run([sys.executable, "-c", "from PyQt5 import QtWidgets; QtWidgets.QApplication([])"],
                           capture_output=True, text=True, timeout=60, env=env)
    if probe.returncode != 0:  # e.g. a machine without the system libraries Qt needs
        pytest.skip(f"Qt cannot start here: {probe.stderr.strip().splitlines()[-1:]}")
    output = tmp_path / "panel.png"
    subprocess.run([sys.executable, str(REPO / "Resources" / "Screenshots" / "render_panel.py"), "--output", str(output)],
                   check=True, capture_output=True, timeout=120, env=env)
    Image = pytest.importorskip("PIL.Image")
    import numpy as np

    with Image.open(output) as image:
        width, height = image.size
        grey = np.asarray(image.convert("L"))
    assert width > 3 * 400 and height > 600
    assert len(np.unique(grey)) > 20  # drawn, not blank
