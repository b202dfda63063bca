"""Text-to-video pipelines: the local diffusers folders the loader runs (folders.py: HunyuanVideo, Wan 2.1 / 2.2,
HunyuanVideo 1.5), the embedded tiny model (tiny.py), the loader and dense-vs-sparse wrapper (hunyuan_video.py) and
its report (report.py)."""
