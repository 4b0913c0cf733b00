"""HTML pages (the web helper fills this in)."""

from fastapi import APIRouter

router = APIRouter()
