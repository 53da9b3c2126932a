"""Render the MedSynth Slicer panel (``MedSynth/Resources/UI/MedSynth.ui``) to a PNG without Slicer.

Usage::

    pip install PyQt5            # in the dev extra
    QT_QPA_PLATFORM=offscreen python Resources/Screenshots/render_panel.py [--output Resources/Screenshots/panel.png]

Qt renders the Designer file offscreen. Slicer and CTK widget classes do not exist outside Slicer, so
each is swapped for a stand-in before loading: ``ctkCollapsibleButton`` becomes a group box,
``ctkComboBox`` a combo box, and the MRML and CTK editors (node selectors, sliders, path editor, markups
place widget) dashed, labelled placeholders that name the class and what it shows.

The panel is filled as the module fills it at start-up: combo items, spin-box and slider ranges and the
special-value text of 0 from the library (``MedSynthSlicerLib.panel_settings.panel_knobs``), the preset,
device and model lists from ``MedSynthSlicerLib.choices.panel_choices`` as on first opening, before
PyTorch is installed (the device and model lists depend on the machine), and every value from the
defaults of ``MedSynth.py``'s parameter node. The three task tabs are drawn side by side and a caption
in the picture says what it is.

Beside the PNG, ``<name>.sources.json`` records the SHA-256 of what the picture is made from (the
``.ui``, what the panel reads from the library and from the parameter node, and this script);
``Testing/test_slicer_module.py`` recomputes it and fails when the picture was not regenerated. Computing
it (:func:`sources_record`) imports no Qt.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedSynth"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSynth.ui"
MODULE_PY = MODULE_DIR / "MedSynth.py"
THIS_FILE = Path(__file__).resolve()
DEFAULT_OUTPUT = THIS_FILE.parent / "panel.png"
REGENERATE = "QT_QPA_PLATFORM=offscreen python Resources/Screenshots/render_panel.py"

#: Slicer/CTK classes drawn as labelled placeholders.
PLACEHOLDERS = {"qMRMLNodeComboBox", "ctkSliderWidget", "ctkPathLineEdit", "qSlicerMarkupsPlaceWidget"}

#: Combo boxes filled from :func:`MedSynthSlicerLib.choices.panel_choices`, by the list they show.
RUN_TIME_LISTS = {"deviceComboBox": "devices", "modelComboBox": "models", "lesionPresetComboBox": "presets"}

CAPTION = ("Rendered from MedSynth.ui with PyQt5, not a Slicer screenshot: Slicer/CTK widgets are drawn as dashed "
           "placeholders. Lists, ranges and defaults are the module's own; the device and model lists are shown as "
           "before PyTorch is installed (they depend on the machine).")

PLACEHOLDER_STYLE = "QLabel { border: 1px dashed #8a8a8a; background: #f3f5f8; color: #333; padding: 3px; }"


# ---- what the panel shows, read without Qt --------------------------------------------------------
def _parameter_class() -> ast.ClassDef:
    for node in ast.parse(MODULE_PY.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("ParameterNode"):
            return node
    raise RuntimeError(f"{MODULE_PY} has no parameter node class")


def wrapper_choices() -> dict[str, list[str]]:
    """Parameter name -> its Choice values, read from the parameterNodeWrapper class."""
    choices: dict[str, list[str]] = {}
    for item in _parameter_class().body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.annotation, ast.Subscript):
            for meta in getattr(item.annotation.slice, "elts", [])[1:]:
                if isinstance(meta, ast.Call) and ast.unparse(meta.func) == "Choice":
                    choices[item.target.id] = ast.literal_eval(meta.args[0])
    return choices


def parameter_defaults() -> dict[str, Any]:
    """Parameter name -> its default in the parameterNodeWrapper class (fields with a literal default)."""
    defaults = {}
    for item in _parameter_class().body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
            defaults[item.target.id] = ast.literal_eval(item.value)
    return defaults


def _slicer_lib():
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from MedSynthSlicerLib import choices, panel_settings

    return choices, panel_settings


def panel_offers() -> dict[str, Any]:
    """What the panel reads at start-up, as drawn: ``knobs`` (:func:`panel_knobs` less the tooltips, which a
    picture cannot show), ``lists`` (:func:`panel_choices` as before PyTorch is installed, so the same on every
    machine), and the parameter node's ``defaults`` and ``choices``."""
    choices, panel_settings = _slicer_lib()
    knobs = {name: {key: value for key, value in offer.items() if key != "toolTip"}
             for name, offer in panel_settings.panel_knobs().items()}
    with mock.patch.object(choices, "torch_installed", lambda: False):
        found = choices.panel_choices()
    lists = {key: found[key] for key in ("devices", "models", "presets", "deviceSummary", "tasks")}
    return json.loads(json.dumps({"knobs": knobs, "lists": lists, "defaults": parameter_defaults(),
                                  "choices": wrapper_choices()}))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _text_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def sources_record(offers: Optional[dict] = None) -> dict[str, Any]:
    """The SHA-256 of what the picture is made from, per part and in all (``sha256``). Imports no Qt."""
    offers = panel_offers() if offers is None else offers
    parts = {
        UI_FILE.relative_to(REPO).as_posix(): _text_sha256(UI_FILE),
        THIS_FILE.relative_to(REPO).as_posix(): _text_sha256(THIS_FILE),
        "library offers (panel_knobs without tooltips, panel_choices without PyTorch)": hashlib.sha256(
            _canonical({"knobs": offers["knobs"], "lists": offers["lists"]})).hexdigest(),
        "parameter node defaults and choices (MedSynth.py)": hashlib.sha256(
            _canonical({"defaults": offers["defaults"], "choices": offers["choices"]})).hexdigest(),
    }
    return {"sha256": hashlib.sha256(_canonical(parts)).hexdigest(), "parts": parts, "regenerate": REGENERATE}


def record_path(output: Path) -> Path:
    """The sources record written beside ``output``: ``panel.png`` -> ``panel.sources.json``."""
    return output.with_name(f"{output.stem}.sources.json")


# ---- the .ui with stand-ins ------------------------------------------------------------------------
def _text_property(value: str) -> ET.Element:
    prop = ET.Element("property", name="text")
    ET.SubElement(prop, "string").text = value
    return prop


def _property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = list(prop)[0]
            if child.tag == "stringlist":
                return [s.text for s in child.findall("string")]
            return child.text
    return None


def _slider_text(widget: ET.Element, offer: dict, value: Any) -> str:
    """A slider as its value and range: ``1.0 in [0.0, 2.0]``, ``preset in [0.0, 300.0] mm``."""
    decimals = int(_property(widget, "decimals") or 2)
    suffix = _property(widget, "suffix") or ""
    low, high = float(offer["low"]), float(offer["high"])
    value = float(low if value is None else value)
    shown = offer["zero"] if offer.get("zero") and value == low else f"{value:.{decimals}f}{suffix}"
    return f"{shown}  in [{low:.{decimals}f}, {high:.{decimals}f}]{suffix}"


def placeholder_ui(tab_index: int, offers: Optional[dict] = None) -> str:
    """The .ui with Slicer/CTK classes swapped for stand-ins and ``tab_index`` selected."""
    offers = panel_offers() if offers is None else offers
    tree = ET.parse(UI_FILE)
    root = tree.getroot()
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls == "qMRMLWidget":
            widget.set("class", "QWidget")
        elif cls == "ctkCollapsibleButton":
            widget.set("class", "QGroupBox")
            for prop in widget.findall("property"):
                if prop.get("name") == "text":
                    prop.set("name", "title")
        elif cls == "ctkComboBox":
            widget.set("class", "QComboBox")
        elif cls in PLACEHOLDERS:
            parameter = _property(widget, "SlicerParameterName")
            if cls == "ctkSliderWidget":
                detail = _slider_text(widget, offers["knobs"][widget.get("name")], offers["defaults"].get(parameter))
            else:
                detail = {
                    "qMRMLNodeComboBox": " / ".join(t.replace("vtkMRML", "").replace("Node", "")
                                                    for t in _property(widget, "nodeTypes") or []),
                    "ctkPathLineEdit": "model package .json",
                    "qSlicerMarkupsPlaceWidget": "place points in the views",
                }[cls]
            text = f"{detail}  ⟨{cls}⟩"
            for prop in list(widget.findall("property")):
                if prop.get("name") not in ("toolTip", "SlicerParameterName"):
                    widget.remove(prop)
            widget.set("class", "QLabel")
            widget.append(_text_property(text))
        elif cls == "QTabWidget":
            for prop in widget.findall("property"):
                if prop.get("name") == "currentIndex":
                    list(prop)[0].text = str(tab_index)
    custom = root.find("customwidgets")
    if custom is not None:
        root.remove(custom)
    connections = root.find("connections")
    if connections is not None:
        root.remove(connections)
    return ET.tostring(root, encoding="unicode")


# ---- drawing (PyQt5, imported here only) -------------------------------------------------------------
def _fill(panel, offers: dict, QtWidgets) -> None:
    """Fill the widgets as ``populateChoices`` and the parameter node do in Slicer."""
    knobs, lists, defaults = offers["knobs"], offers["lists"], offers["defaults"]
    for widget in panel.findChildren(QtWidgets.QWidget):
        name = widget.objectName()
        parameter = widget.property("SlicerParameterName")
        value = defaults.get(parameter)
        offer = knobs.get(name, {})
        if isinstance(widget, QtWidgets.QComboBox):
            if "items" in offer:
                items = offer["items"]
            elif name in RUN_TIME_LISTS:
                items = lists[RUN_TIME_LISTS[name]]
            else:
                items = [(choice, choice) for choice in offers["choices"].get(parameter, [])]
            widget.clear()
            for label, data in items:
                widget.addItem(str(label), data)
            widget.setCurrentIndex(max(widget.findData(value), 0))
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            if "low" in offer:
                convert = int if isinstance(widget, QtWidgets.QSpinBox) else float
                widget.setRange(convert(max(offer["low"], -2**31)), convert(min(offer["high"], 2**31 - 1)))
                if offer.get("zero"):
                    widget.setSpecialValueText(offer["zero"])
            if value is not None:
                widget.setValue(value)
        elif isinstance(widget, QtWidgets.QCheckBox) and isinstance(value, bool):
            widget.setChecked(value)
        elif isinstance(widget, QtWidgets.QLineEdit) and isinstance(value, str):
            widget.setText(value)
    panel.findChild(QtWidgets.QLabel, "deviceInfoLabel").setText(lists["deviceSummary"])
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setVisible(False)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("Ready")


def _combo_lists(section, QtWidgets) -> str:
    """``Label: item, item; ...`` for the combo boxes of ``section``: what their closed boxes hide."""
    shown = []
    for combo in section.findChildren(QtWidgets.QComboBox):
        form = combo.parentWidget().layout()
        label = form.labelForField(combo) if isinstance(form, QtWidgets.QFormLayout) else None
        name = label.text().rstrip(":") if label is not None else combo.objectName()
        shown.append(f"{name}: " + ", ".join(combo.itemText(i) for i in range(combo.count())))
    return "; ".join(shown) + "."


def render(output: Path, *, width: int = 450) -> Path:
    """Write the picture to ``output`` and its sources record beside it (:func:`record_path`)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PyQt5 import QtCore, QtGui, QtWidgets, uic
    except ImportError:
        sys.exit("render_panel.py needs PyQt5: pip install PyQt5 (it is in MedSynth's dev extra)")

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setStyle("Fusion")
    offers = panel_offers()
    pictures, lists, shared = [], [], ""
    for tab_index in range(3):
        with tempfile.NamedTemporaryFile("w", suffix=".ui", delete=False, encoding="utf-8") as handle:
            handle.write(placeholder_ui(tab_index, offers))
            ui_path = handle.name
        try:
            panel = uic.loadUi(ui_path)
        finally:
            os.unlink(ui_path)
        for label in panel.findChildren(QtWidgets.QLabel):
            if "⟨" in label.text():
                label.setStyleSheet(PLACEHOLDER_STYLE)
                label.setWordWrap(False)
                # Like the real selectors, take the width the form gives, never push the labels out.
                label.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Fixed)
                label.setMinimumWidth(40)
        _fill(panel, offers, QtWidgets)
        panel.setFixedWidth(width)
        panel.adjustSize()
        panel.resize(width, panel.sizeHint().height())
        pictures.append(panel.grab())
        tab = panel.findChild(QtWidgets.QTabWidget, "taskTabWidget")
        lists.append(_combo_lists(tab.widget(tab_index), QtWidgets))
        if tab_index == 0:
            shared = _combo_lists(panel.findChild(QtWidgets.QGroupBox, "settingsCollapsibleButton"), QtWidgets)

    gap = 12
    total_width = sum(p.width() for p in pictures) + gap * (len(pictures) + 1)
    font = QtGui.QFont(app.font())
    bold = QtGui.QFont(font)
    bold.setBold(True)
    flags = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignTop | QtCore.Qt.TextWordWrap)

    def height_of(text: str, text_width: int, text_font=font) -> int:
        return QtGui.QFontMetrics(text_font).boundingRect(QtCore.QRect(0, 0, text_width, 10000), flags, text).height()

    column_texts = [f"Lists on the {tab.tabText(i)} tab: " + lists[i] for i in range(len(pictures))]
    shared_text = "Lists on every tab: " + shared
    lists_height = max(height_of(text, p.width()) for text, p in zip(column_texts, pictures))
    shared_height = height_of(shared_text, total_width - 2 * gap)
    caption_height = height_of(CAPTION, total_width - 2 * gap, bold)
    height = max(p.height() for p in pictures)
    canvas = QtGui.QPixmap(total_width, height + lists_height + shared_height + caption_height + 5 * gap)
    canvas.fill(QtGui.QColor("#d9dde3"))
    painter = QtGui.QPainter(canvas)
    painter.setPen(QtGui.QColor("#222"))
    painter.setFont(font)
    x = gap
    y = height + 2 * gap
    for picture, text in zip(pictures, column_texts):
        painter.drawPixmap(x, gap, picture)
        painter.drawText(QtCore.QRect(x, y, picture.width(), lists_height), flags, text)
        x += picture.width() + gap
    y += lists_height + gap // 2
    painter.drawText(QtCore.QRect(gap, y, total_width - 2 * gap, shared_height), flags, shared_text)
    y += shared_height + gap
    painter.setFont(bold)
    painter.drawText(QtCore.QRect(gap, y, total_width - 2 * gap, caption_height), flags, CAPTION)
    painter.end()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not canvas.save(str(output), "PNG"):
        raise RuntimeError(f"could not write {output}")
    record_path(output).write_text(json.dumps(sources_record(offers), indent=2) + "\n", encoding="utf-8")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"PNG to write (default {DEFAULT_OUTPUT}); its sources record goes beside it")
    args = parser.parse_args(argv)
    path = render(args.output)
    print(f"wrote {path} and {record_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
