"""The unmixed image an analysis writes (``unmixed.ome.zarr``): every component's abundance
plus a ``residual`` channel, as OME-Zarr.

A slide's tiles unmix their pixels to find and measure the cells. Their cores' abundances
are kept, so that the unmixed image needs no second unmixing of the slide: each tile job
writes its core into a staging array (``tiles/unmixed.zarr``, exact float32, one owner per
chunk) and the image is copied from it once every tile is done. Tiles that did not write
theirs (run on a cluster whose workers may not share this machine's folders, or finished
by an earlier run that did not write the image) are unmixed here first. Measured on a
2048^2 8-channel slide, one worker: analysis with the image 24.5 s plain NNLS and 117 s
Poisson, of which the second unmixing took 6 and 57 s; staged, a Poisson analysis ran 1.6x
faster, a plain one as fast (benchmarks/HISTORY.md, session 31).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: Side (px) of unmixed.ome.zarr's chunks.
UNMIXED_CHUNK_PX = 1024
#: The staging array's name in the tiles folder, and its tiles' marks (``tile_*.unmixed``:
#: written after the tile's core is staged, before its cell table).
STAGE_NAME = "unmixed.zarr"
MARK_SUFFIX = ".unmixed"


def mark_path(tiles_dir: Path, index: int) -> Path:
    """The mark of tile `index`: its core is in the staging array."""
    return Path(tiles_dir) / f"tile_{index:06d}{MARK_SUFFIX}"


def unmixed_block(image_yxc, panel, settings) -> np.ndarray:
    """(Y, X, K + 1) float32: the abundances of a (Y, X, C) block and its relative residual
    (``||y - A x|| / ||y||``, weighted as the unmixing is), unmixed as the analysis's tiles
    unmix it (:func:`~qdmed.imaging._analyze.unmix_image`)."""
    from qdmed.imaging._analyze import unmix_image

    ab, resid = unmix_image(image_yxc, panel, return_residual=True,
                            offset_adu=settings.offset_adu, **settings.unmix_options())
    return np.concatenate([ab, resid[..., None]], axis=2)


#: The staging array's chunks are at least this side (px) unless the tile has no divisor
#: between it and UNMIXED_CHUNK_PX.
STAGE_MIN_CHUNK_PX = 256


def stage_chunk_px(tile: int) -> int:
    """The staging array's chunk side: a divisor of the tile, so that every chunk belongs
    to one tile (tiles write theirs at once from several processes); the largest up to
    1024 (the image's chunk: a tile of 2100 px stages in 700 px chunks, as a tile of 2048
    in 1024; one chunk a tile decompressed each 8 times per image chunk, a review), the
    tile itself when it has none from 256."""
    if tile <= UNMIXED_CHUNK_PX:
        return tile
    return next((d for d in range(UNMIXED_CHUNK_PX, STAGE_MIN_CHUNK_PX - 1, -1)
                 if tile % d == 0), tile)


def open_stage(tiles_dir: Path, shape_yx: tuple[int, int], n_channels: int, tile: int):
    """``(array, made)``: the staging array (K + 1, Y, X) float32 in ``tiles_dir``, and
    whether it was made now (absent, half-made, or of another shape or chunking: the
    tiles' marks then name another array's pixels)."""
    import numcodecs
    import zarr

    path = tiles_dir / STAGE_NAME
    shape = (n_channels, *shape_yx)
    c = stage_chunk_px(tile)
    if path.is_dir():
        try:
            z = zarr.open_array(str(path), mode="r+")
            if z.shape == shape and z.chunks == (1, c, c) and z.dtype == np.float32:
                return z, False
        except Exception:  # noqa: BLE001 - a half-made array: made again below
            pass
        shutil.rmtree(path)
    # fast compression: it is read back once; every chunk stored (zeros too)
    return zarr.create_array(str(path), shape=shape, chunks=(1, c, c), dtype=np.float32,
                             compressors=numcodecs.Blosc(cname="lz4", clevel=1,
                                                         shuffle=numcodecs.Blosc.SHUFFLE),
                             fill_value=0, zarr_format=2,
                             config={"write_empty_chunks": True}), True


def stage_tile(stage_path: str, box, block_yxk: np.ndarray) -> None:
    """Write a tile core's (Y, X, K + 1) block at its place in the staging array."""
    import zarr

    y0, y1, x0, x1 = box
    z = zarr.open_array(stage_path, mode="r+")
    z[:, y0:y1, x0:x1] = np.moveaxis(block_yxk, 2, 0)


def unmixing_record(panel, settings, keep_bits: int | None) -> dict[str, Any]:
    """How an unmixed image was made, as its root attribute ``qdmed.unmixing`` records it."""
    from qdmed import __version__
    from qdmed.imaging._analyze import panel_offset

    off = panel_offset(panel, settings.offset_adu)
    return {"qdmed_version": __version__, "unmix_weights": settings.unmix_weights,
            "read_noise_adu": settings.read_noise_used(), "offset_adu": None if off is None
            else [float(v) for v in np.broadcast_to(off, (len(panel.channels),))],
            "unmixed_keep_bits": keep_bits,
            "residual": "||y - A x|| / ||y||" + (", each channel weighted by 1 / (A x + "
                                                 "read_noise^2)" if settings.unmix_weights
                                                 else "")}


def _bit_round(block: np.ndarray, keep_bits: int | None) -> np.ndarray:
    """Values rounded to `keep_bits` mantissa bits (numcodecs' BitRound, applied before
    writing so that the file is plain float32 for any reader)."""
    if keep_bits is None:
        return block
    from numcodecs import BitRound

    out = np.asarray(BitRound(keepbits=keep_bits).encode(np.ascontiguousarray(block)))
    return out.view(np.float32).reshape(block.shape)


def write_unmixed(slide, panel, settings, dest, pixel_size_um: float | None,
                  keep_bits: int | None = None, progress: bool = False,
                  staged: Path | None = None, fit_samples: list | None = None) -> Path:
    """Unmixed abundances of every component plus a ``residual`` channel (the
    goodness-of-fit map) as OME-Zarr at `dest`, recording `pixel_size_um` (None: unknown)
    and how it was made (:func:`unmixing_record`); with `keep_bits`, values rounded to that
    many mantissa bits (measured 135 -> 76 MB for a 2048^2 8-channel slide at 10 bits).

    From the staging array `staged` (every tile's core written), or else by unmixing
    `slide` chunk by chunk; then, given a list `fit_samples`, each chunk's pixel sample for
    :func:`~qdmed.imaging._fit.fit_summary` is appended to it (all pixels, glass too:
    measured on a simulated half-glass 2048^2 slide, misfit 0.000 with its panel and 0.41-0.45
    with a 3-label panel, as an analysis's cell pixels give). With ``progress``, a bar
    counts the chunks."""
    import dask.array as da

    from qdmed.imaging._analyze import _progress
    from qdmed.imaging._slideio import write_ome_zarr

    k1 = len(panel.components) + 1
    cs = UNMIXED_CHUNK_PX
    if staged is not None:
        import zarr

        z = zarr.open_array(str(staged), mode="r")
        data = da.from_zarr(z).transpose(1, 2, 0).rechunk((cs, cs, -1))
        ab = data.map_blocks(_bit_round, keep_bits, dtype=np.float32)
    else:  # the writer's chunks, each read (read_region: a chunk that does not decode is
        # a FileFormatError naming it) and unmixed once
        h, w = (int(v) for v in slide.shape[:2])
        sample = fit_samples is not None and not panel.unmixed
        if sample:
            from qdmed.imaging._analyze import panel_offset
            from qdmed.imaging._detector import saturation_level
            from qdmed.imaging._fit import residual_sample

            top, _ = saturation_level(slide.dtype, significant_bits=slide.significant_bits)
            off = panel_offset(panel, settings.offset_adu)

        def block(block_info=None):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            region = slide.read_region(y0, y1, x0, x1)
            out = unmixed_block(region, panel, settings)
            if sample:
                fit_samples.append(residual_sample(
                    region, out[..., :-1], np.ones(region.shape[:2], np.int32),
                    panel.endmembers, off, top))
            return _bit_round(out, keep_bits)

        sizes = [tuple(min(cs, n - i) for i in range(0, n, cs)) for n in (h, w)]
        ab = da.map_blocks(block, chunks=(*sizes, (k1,)), dtype=np.float32,
                           meta=np.empty((0, 0, 0), np.float32))
    h, w = (int(v) for v in ab.shape[:2])
    with _progress(progress, -(-h // cs) * -(-w // cs), 0,
                   f"{Path(dest).name} (chunks)") as advance:
        return write_ome_zarr(dest, ab, channel_names=[*panel.components, "residual"],
                              pixel_size_um=pixel_size_um,
                              attrs={"unmixing": unmixing_record(panel, settings, keep_bits)},
                              chunks=(cs, cs), advance=advance)


def write_staged_unmixed(slide, panel, settings, out: Path, boxes, keep_bits: int | None,
                         progress: bool) -> None:
    """An analysis's ``unmixed.ome.zarr`` in `out` from the staging array its tiles
    (`boxes`) wrote, tiles without their mark unmixed here first; then the staging array
    and marks removed (marks first: a mark without its array would copy zeros)."""
    from qdmed.imaging._analyze import _progress
    from qdmed.report import atomic_write_text

    tiles = Path(out) / "tiles"
    stage = tiles / STAGE_NAME
    missing = [i for i in range(len(boxes)) if not mark_path(tiles, i).exists()]
    with _progress(progress and bool(missing), len(missing), 0,
                   "tiles unmixed for unmixed.ome.zarr") as advance:
        for i in missing:
            y0, y1, x0, x1 = boxes[i]
            stage_tile(str(stage), boxes[i],
                       unmixed_block(slide.read_region(y0, y1, x0, x1), panel, settings))
            atomic_write_text(mark_path(tiles, i), "")
            advance()
    write_unmixed(slide, panel, settings, Path(out) / "unmixed.ome.zarr",
                  settings.pixel_size_um, keep_bits, progress=progress, staged=stage)
    for i in range(len(boxes)):
        mark_path(tiles, i).unlink(missing_ok=True)
    shutil.rmtree(stage, ignore_errors=True)
