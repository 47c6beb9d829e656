"""Datasets: upload examples as a version, list datasets, show one with its versions and examples."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse, not_found
from dspex.server.models import DatasetOut, DatasetUpload, DatasetVersionOut, ExampleOut
from dspex.server.routes._common import errors, single_query_values

if TYPE_CHECKING:
    from dspex.runtime.app import App
    from dspex.store.datasets import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(single_query_values)])

DatasetName = Annotated[str, Path(max_length=200, description="The dataset's name.")]
_read = require("programs:read")


def _dataset_json(app: App, dataset: Dataset, *, versions: bool = False) -> dict[str, Any]:
    latest = app.datasets.repository.get_version(dataset.latest_id) if dataset.latest_id else None
    data: dict[str, Any] = {
        "name": dataset.name,
        "description": dataset.description,
        "created_at": dataset.created_at.isoformat(),
        "updated_at": dataset.updated_at.isoformat(),
        "version_count": dataset.version_count,
        "latest": latest.to_json() if latest is not None else None,
    }
    if versions:
        data["version_ids"] = [v.id for v in app.datasets.repository.versions(dataset.name)]
    return data


def _dataset_or_404(app: App, name: str) -> Dataset:
    dataset = app.datasets.repository.get_dataset(name)
    if dataset is None:
        raise not_found(f"unknown dataset {name!r}; GET /v1/datasets lists them")
    return dataset


@router.post("", status_code=201, response_model=DatasetVersionOut, responses=errors(401, 403, 422))
def upload(
    body: DatasetUpload, request: Request, _principal: Principal = Depends(require("programs:write"))
) -> JSONResponse:
    """Import ``records`` as a version of dataset ``name``; the same content again is the same version.

    A record that is not valid for storage (not an object, a NaN, a missing input field...) is a 422 that
    names it; nothing is written then.
    """
    version = dspex_of(request).datasets.import_records(
        body.name,
        body.records,
        inputs=body.inputs,
        labels=body.labels,
        split=body.split,
        seed=body.seed,
        description=body.description,
    )
    return JSONResponse(version.to_json(), status_code=201)


@router.get("", response_model=list[DatasetOut], responses=errors(401, 403))
def list_datasets(request: Request, _principal: Principal = Depends(_read)) -> JSONResponse:
    """Every dataset with its newest version."""
    app = dspex_of(request)
    return JSONResponse([_dataset_json(app, d) for d in app.datasets.repository.list_datasets()])


@router.get("/{name}", response_model=DatasetOut, responses=errors(401, 403, 404))
def show(name: DatasetName, request: Request, _principal: Principal = Depends(_read)) -> JSONResponse:
    """One dataset: its newest version (fields, splits, statistics) and every version id, newest first."""
    app = dspex_of(request)
    return JSONResponse(_dataset_json(app, _dataset_or_404(app, name), versions=True))


@router.get(
    "/{name}/examples",
    response_model=list[ExampleOut],
    responses=errors(401, 403, 404, 422),
)
def examples(
    name: DatasetName,
    request: Request,
    version: Annotated[
        str | None, Query(max_length=64, description="A version id; default the newest.")
    ] = None,
    split: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    _principal: Principal = Depends(_read),
) -> JSONResponse:
    """Examples of a version in order: ``{"position", "split", "data"}``."""
    app = dspex_of(request)
    dataset = _dataset_or_404(app, name)
    version_id = version or dataset.latest_id
    stored = app.datasets.repository.get_version(version_id) if version_id else None
    if stored is None or stored.dataset != name:
        raise not_found(f"dataset {name!r} has no version {version!r}")
    if split is not None and split not in stored.splits:
        raise not_found(f"dataset {name!r} has no split {split!r}; it has {sorted(stored.splits)}")
    rows = itertools.islice(app.datasets.repository.examples(stored.id, split=split), offset, offset + limit)
    return JSONResponse([{"position": r.position, "split": r.split, "data": r.data} for r in rows])
