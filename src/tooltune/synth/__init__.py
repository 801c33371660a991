"""``tooltune synth``: verified tool-calling training and test data from tool schemas and a few examples.

``spec`` reads what to build, ``pools`` learns templates and values, ``plan`` decides the coverage, ``offline`` and
``teacher`` write samples, ``verify`` checks each one, ``build`` de-duplicates, splits and writes the dataset.
"""

from tooltune.synth.build import SynthResult, prepare, synthesize, write_outputs
from tooltune.synth.spec import SynthError, SynthSpec, load_spec

__all__ = ["SynthError", "SynthResult", "SynthSpec", "load_spec", "prepare", "synthesize", "write_outputs"]
