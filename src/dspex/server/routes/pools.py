"""Worker pools of this server process: each worker's pid, RSS, tasks and state, queue depth, health."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from dspex.server.app import dspex_of
from dspex.server.auth import Principal, require
from dspex.server.errors import JSONResponse
from dspex.server.models import PoolOut
from dspex.server.routes._common import errors

router = APIRouter(prefix="/v1/pools", tags=["pools"])


@router.get("", response_model=list[PoolOut], responses=errors(401, 403))
def list_pools(request: Request, _principal: Principal = Depends(require("admin"))) -> JSONResponse:
    """The pools this server has started (``dspex serve --pool``, or runs that named one); needs ``admin``
    (pids and memory are operational detail)."""
    return JSONResponse([status.to_json() for status in dspex_of(request).pools.status()])
