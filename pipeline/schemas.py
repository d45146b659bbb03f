"""JSON Schemas of the native formats, generated from the models the code validates with."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from pipeline.config import Config
from pipeline.io.formats import Assignment, PhotoRecord
from pipeline.spec import Spec

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MODELS: dict[str, type[BaseModel]] = {
    "photo_manifest_row": PhotoRecord,
    "annotation_line": Assignment,
    "build_config": Config,
    "annotation_spec": Spec,
}


def schema_texts() -> dict[str, str]:
    """File name -> JSON Schema text, byte-stable."""
    out = {}
    for name, model in MODELS.items():
        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"crowdseg/{name}.schema.json",
               **model.model_json_schema()}
        out[f"{name}.schema.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate every schema file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in schema_texts().items():
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    return paths
