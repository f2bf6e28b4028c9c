"""The synthetic ground-truth world behind ``labelmill synth pose``.

Modules, each with one job:

* :mod:`~labelmill.operators.synth.rig` - anatomical pose channels -> SMPL axis-angle; joint limits.
* :mod:`~labelmill.operators.synth.motion` - procedural motions (walk, wave, ...), ``sample_poses``.
* :mod:`~labelmill.operators.synth.camera` - the scaled orthographic camera and a smooth pan/zoom path.
* :mod:`~labelmill.operators.synth.detector_noise` - detector-like COCO-17 keypoints, noise recorded.
* :mod:`~labelmill.operators.synth.render` - OpenCV drawing and deterministic mp4 encoding (PyAV).
* :mod:`~labelmill.operators.synth.scene` - one video's people, cameras, detections and frames.
* :mod:`~labelmill.operators.synth.corpus` - ``write_synthetic_corpus``: the Kinetics-style corpus.
* :mod:`~labelmill.operators.synth.config` - ``SynthConfig``, every knob.

Nothing is imported here, so importing one module does not pull in the others (torch, PyAV).
See docs/synthetic_world.md.
"""
