"""`vtpdeploy calib`: build a reproducible calibration set (.npy + manifest) from a train split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("calib")
    def calib(
        source: str = typer.Argument(..., help="run dir (uses its recipe's data section) or an image folder"),
        out: Path = typer.Option(..., "--out", help="calibration dir to write"),
        n: int = typer.Option(500, "--n", min=1, help="images to draw (~500 for ImageNet-class models)"),
        seed: int = typer.Option(0, "--seed", help="same seed -> byte-identical set"),
        split: str = typer.Option("train", "--split", help="split to draw from (train; never val)"),
        model: Optional[str] = typer.Option(None, "--model", help="image folder: saved model path or timm name for the transform"),
        input_size: Optional[str] = typer.Option(None, "--input-size", help="image folder: C,H,W with ImageNet defaults"),
    ) -> None:
        """Draw N preprocessed train images into CALIB_DIR/calib.npy, labels.npy and manifest.json."""
        from ..deploy.export.calib import calib_from_source
        from ..errors import VtpError

        size = None
        if input_size:
            try:
                size = tuple(int(v) for v in input_size.split(","))
            except ValueError:
                size = ()
            if len(size) != 3 or min(size) < 1:
                raise VtpError(f"--input-size {input_size!r}: expected C,H,W like 3,224,224")
        from ..deploy.export.stage import check_writable

        created = not out.exists()
        check_writable(out)
        try:
            manifest = calib_from_source(source, out, n=n, seed=seed, split=split, model=model, input_size=size)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # a refused calib leaves no empty --out behind
            raise
        typer.echo(f"wrote {manifest['n']} images {manifest['shape'][1:]} to {out / 'calib.npy'} "
                   f"(sha256 {manifest['files']['calib.npy'][:12]})")
