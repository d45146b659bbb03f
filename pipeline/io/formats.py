"""The native input formats, as pydantic models; ``schemas/`` is generated from these."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Point = Annotated[list[float], Field(min_length=2, max_length=2, description="[x, y] in pixels of the oriented photo")]


def check_relative_path(p: str) -> str:
    """Refuse absolute paths and '..' escapes; a manifest path stays under the manifest's folder."""
    if not p or "\x00" in p:
        raise ValueError("path is empty")
    if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive:
        raise ValueError(f"path {p!r} is absolute; paths are relative to the manifest's folder")
    if ".." in PurePosixPath(p.replace("\\", "/")).parts:
        raise ValueError(f"path {p!r} escapes the manifest's folder with '..'")
    return p


class PhotoRecord(BaseModel):
    """One row of the photos manifest (CSV, JSONL or Parquet). Other columns are kept as attributes."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    photo_id: str = Field(min_length=1, description="unique id of the upload")
    user_id: str = Field(min_length=1, description="id of the crowd worker who uploaded it")
    path: str = Field(description="photo file, relative to the manifest's folder")
    submitted_at: str | None = Field(None, description="upload time, ISO 8601")

    _check_path = field_validator("path")(check_relative_path)


class Shape(BaseModel):
    """One polygon with optional holes, labelled with a spec class name or alias."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1)
    points: list[Point] = Field(description="outer ring; at least 3 points")
    holes: list[list[Point]] = Field(default_factory=list, description="inner rings cut out of the shape")


class Assignment(BaseModel):
    """One line of the annotations JSONL: one annotator's work on one photo."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    photo_id: str = Field(min_length=1)
    annotator_id: str = Field(min_length=1)
    assignment_id: str | None = None
    submitted_at: str | None = None
    golden: bool = Field(False, description="an expert or control answer")
    image_width: int | None = Field(None, gt=0, description="width of the image as the annotator saw it, when it "
                                    "was resized; points are scaled to the photo")
    image_height: int | None = Field(None, gt=0, description="height of the image as the annotator saw it")
    shapes: list[Shape] = Field(default_factory=list)
