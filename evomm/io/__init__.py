"""Checkpoint I/O: lazy tensor sources, a streaming sharded writer, atomic output folders."""

from evomm.io.hub import resolve_model_path
from evomm.io.outdir import AUX_FILES, atomic_output_dir, copy_aux_files
from evomm.io.safetensors_header import TensorInfo, read_header
from evomm.io.sources import PickleSource, SafetensorsSource, TensorSource, open_source
from evomm.io.writer import PlannedTensor, ShardedWriter, parse_size

__all__ = [
    "AUX_FILES", "PickleSource", "PlannedTensor", "SafetensorsSource", "ShardedWriter",
    "TensorInfo", "TensorSource", "atomic_output_dir", "copy_aux_files", "open_source",
    "parse_size", "read_header", "resolve_model_path",
]
