"""Post-install check: a CPU torch must not have dragged CUDA packages in.

Run by the Makefile after installing. Exit 1 with the offending package names, unless
LABELMILL_ALLOW_CUDA_PACKAGES=1 (for GPU machines that want them).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys


def cuda_packages() -> list[str]:
    """Names of installed distributions that are NVIDIA CUDA runtime wheels."""
    names = {d.metadata["Name"] or "" for d in importlib.metadata.distributions()}
    return sorted(n for n in names if n.lower().startswith("nvidia-"))


def opencv_problem() -> str | None:
    """Why the installed OpenCV cannot serve labelmill, or None.

    Every OpenCV distribution installs the same ``cv2`` package, so two of them overwrite
    each other's files; and 5.x dropped ``HOGDescriptor`` (the person detector).
    """
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    opencvs = sorted(n for n in names if n.startswith("opencv-"))
    if len(opencvs) > 1:
        return "several OpenCV distributions are installed (%s); keep only opencv-contrib-python<5" % ", ".join(opencvs)
    try:
        import cv2
    except ImportError as exc:
        return f"cv2 does not import: {exc}"
    if not hasattr(cv2, "HOGDescriptor"):
        return f"cv2 {cv2.__version__} has no HOGDescriptor (OpenCV 5.x?); install opencv-contrib-python<5"
    return None


def main() -> int:
    import torch

    problem = opencv_problem()
    if problem:
        sys.stderr.write(f"labelmill: {problem}\n")
        return 1
    found = cuda_packages()
    if found and torch.version.cuda is None and os.environ.get("LABELMILL_ALLOW_CUDA_PACKAGES") != "1":
        sys.stderr.write(
            "labelmill: CPU torch %s is installed but CUDA packages came in with it: %s\n"
            "Install torch first (make TORCH_SPEC=...) and keep constraints.txt pinning it.\n"
            % (torch.__version__, ", ".join(found))
        )
        return 1
    sys.stderr.write("labelmill: environment ok (torch %s, cuda=%s)\n" % (torch.__version__, torch.version.cuda))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
