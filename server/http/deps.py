"""FastAPI dependency aliases: the engine, the segmentation pipeline and settings live on ``app.state`` (set by ``create_app``).

The getters are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, which
cost every request two thread hand-offs (wake a worker, wait for it to wake the loop) for an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.engine import Engine
from server.segmentation import Segmenter
from server.settings import Settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_segmenter(request: Request) -> Segmenter:
    segmenter: Segmenter = request.app.state.segmenter
    return segmenter


EngineDep = Annotated[Engine, Depends(get_engine)]
SegmenterDep = Annotated[Segmenter, Depends(get_segmenter)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
