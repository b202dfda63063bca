"""HunyuanVideo pipelines: the embedded tiny model (tiny.py), the dense-vs-sparse wrapper (hunyuan_video.py)
and its report (report.py)."""
