"""Render the MedSynth Slicer panel (``MedSynth/Resources/UI/MedSynth.ui``) to a PNG without Slicer.

Usage::

    pip install PyQt5            # in the dev extra
    python Resources/Screenshots/render_panel.py [--output Resources/Screenshots/panel.png]

Qt renders the Designer file offscreen (``QT_QPA_PLATFORM=offscreen``). Slicer and CTK widget
classes do not exist outside Slicer, so each is swapped for a stand-in before loading:
``ctkCollapsibleButton`` becomes a group box, ``ctkComboBox`` a combo box, and the MRML and
CTK editors (node selectors, sliders, path editor, markups place widget) dashed, labelled
placeholders that name the class and what it selects. Combo boxes bound to a ``Choice``
parameter get the choices of ``MedSynth.py``'s parameter node, as Slicer's connector fills them.
The three task tabs are drawn side by side so the picture shows every task's controls.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "MedSynth" / "Resources" / "UI" / "MedSynth.ui"
MODULE_PY = REPO / "MedSynth" / "MedSynth.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "panel.png"

#: Slicer/CTK classes drawn as labelled placeholders.
PLACEHOLDERS = {"qMRMLNodeComboBox", "ctkSliderWidget", "ctkPathLineEdit", "qSlicerMarkupsPlaceWidget"}

#: Example items for the lists Slicer fills at run time (devices, models, presets).
RUNTIME_ITEMS = {
    "deviceComboBox": ["auto (best available)", "CPU", "NVIDIA GPU (cuda:0)"],
    "modelComboBox": ["auto (best available)", "from file..."],
    "lesionPresetComboBox": ["default (MR: mr-wmh, CT: ct-nodule-solid)", "mr-wmh (MR)",
                             "ct-nodule-solid (CT)"],
}

PLACEHOLDER_STYLE = "QLabel { border: 1px dashed #8a8a8a; background: #f3f5f8; color: #333; padding: 3px; }"


def wrapper_choices() -> dict[str, list[str]]:
    """Parameter name -> its Choice values, read from the parameterNodeWrapper class."""
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    choices: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("ParameterNode"):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.annotation, ast.Subscript):
                    for meta in getattr(item.annotation.slice, "elts", [])[1:]:
                        if isinstance(meta, ast.Call) and ast.unparse(meta.func) == "Choice":
                            choices[item.target.id] = ast.literal_eval(meta.args[0])
    return choices


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


def placeholder_ui(tab_index: int) -> str:
    """The .ui with Slicer/CTK classes swapped for stand-ins and ``tab_index`` selected."""
    tree = ET.parse(UI_FILE)
    root = tree.getroot()
    for widget in root.iter("widget"):
        cls = widget.get("class")
        name = widget.get("name")
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
            detail = {
                "qMRMLNodeComboBox": " / ".join(t.replace("vtkMRML", "").replace("Node", "")
                                                for t in _property(widget, "nodeTypes") or []),
                "ctkSliderWidget": f"{_property(widget, 'value')}{_property(widget, 'suffix') or ''} "
                                   f"in [{_property(widget, 'minimum')}, {_property(widget, 'maximum')}]",
                "ctkPathLineEdit": "model package .json",
                "qSlicerMarkupsPlaceWidget": "place points in the views",
            }[cls]
            text = f"{detail}  ⟨{cls}⟩"
            for prop in list(widget.findall("property")):
                if prop.get("name") != "toolTip":
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


def render(output: Path, *, width: int = 450) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PyQt5 import QtGui, QtWidgets, uic
    except ImportError:
        sys.exit("render_panel.py needs PyQt5: pip install PyQt5 (it is in MedSynth's dev extra)")

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setStyle("Fusion")
    choices = wrapper_choices()
    pictures = []
    for tab_index in range(3):
        with tempfile.NamedTemporaryFile("w", suffix=".ui", delete=False, encoding="utf-8") as handle:
            handle.write(placeholder_ui(tab_index))
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
        for combo in panel.findChildren(QtWidgets.QComboBox):
            parameter = combo.property("SlicerParameterName")
            items = choices.get(parameter) or RUNTIME_ITEMS.get(combo.objectName(), [])
            combo.clear()
            combo.addItems([str(i) for i in items])
        panel.findChild(QtWidgets.QProgressBar, "progressBar").setVisible(False)
        panel.findChild(QtWidgets.QLabel, "statusLabel").setText("Ready")
        panel.setFixedWidth(width)
        panel.adjustSize()
        panel.resize(width, panel.sizeHint().height())
        pictures.append(panel.grab())
    gap = 12
    height = max(p.height() for p in pictures)
    canvas = QtGui.QPixmap(sum(p.width() for p in pictures) + gap * (len(pictures) + 1), height + 2 * gap)
    canvas.fill(QtGui.QColor("#d9dde3"))
    painter = QtGui.QPainter(canvas)
    x = gap
    for picture in pictures:
        painter.drawPixmap(x, gap, picture)
        x += picture.width() + gap
    painter.end()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not canvas.save(str(output), "PNG"):
        raise RuntimeError(f"could not write {output}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    path = render(args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
