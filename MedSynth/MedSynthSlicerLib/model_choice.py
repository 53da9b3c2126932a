"""The panel's model choice as the package file the library loads (no Slicer here).

The panel stores a package *name* (so a saved scene works on another computer), ``auto`` or a file path;
the library takes a package path (or nothing: its own choice). The lesion task takes two kinds of package,
an appearance (``lesion-inpaint``) or a shape (``lesion-shape``) model: the package's own task decides which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from MedSynthLib.errors import InputError, ModelError

__all__ = ["resolve_model", "lesion_models"]


def resolve_model(model: Optional[str]) -> Optional[str]:
    """The package file the library should load for the panel's model choice.

    ``auto``/empty gives None (the library chooses). A package *name* is looked up among the bundled and
    installed packages; anything else is taken as a path to a package ``.json``.

    Raises
    ------
    InputError
        A name that no package has and no file either.
    """
    if model in (None, "", "auto"):
        return None
    if Path(model).suffix in (".json", ".safetensors") or Path(model).is_file():
        if not Path(model).with_suffix(".json").is_file():
            raise InputError(f"model package file {model} does not exist")
        return str(model)
    from MedSynthLib.models import list_packages  # imports torch: only when a package is named

    for info in list_packages():
        if info.name == model:
            return str(info.json_path)
    raise InputError(f"model package {model!r} is not installed; choose another model or load it from a file")


def lesion_models(model: Optional[str]) -> dict[str, Any]:
    """The panel's one model choice for the lesion task: ``{"appearance_model": path}`` or ``{"shape_model": path}``.

    ``auto`` means the procedural generator (an empty dict).

    Raises
    ------
    ModelError
        A package for another task.
    """
    path = resolve_model(model)
    if path is None:
        return {}
    from MedSynthLib.models import read_package_info

    info = read_package_info(path)
    if info.task == "lesion-inpaint":
        return {"appearance_model": path}
    if info.task == "lesion-shape":
        return {"shape_model": path}
    raise ModelError(f"model package {info.name} is a {info.task!r} model; synthetic lesions take a 'lesion-inpaint' "
                     "(appearance) or 'lesion-shape' package; choose one, or 'auto' for the procedural lesions")
