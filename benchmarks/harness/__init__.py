"""The benchmark harness: what every ``bench_<op>.py`` shares (``import harness as H``).

* :mod:`.timers`: the runner's measuring half: ``triton.testing.do_bench`` medians over rotating
  input sets (so that L2 does not flatter), CUDA-graph replay, the CPU fallback, the ceilings
  measured in the run, the GPU name, commit and versions of every record;
* :mod:`.records`: the one record schema, JSON lines, the per-call roofline, old records read
  through ``normalize``;
* :mod:`.run`: the command line (``--smoke``, ``--quick``, ``--out``, ``--m/--k/--n``
  filters...), the loop over a module's declared sweeps and implementations, the ratio to the
  dense layer, the report at the end and the dispatch-table writing.
"""

from .records import *  # noqa: F403
from .run import *  # noqa: F403
from .timers import *  # noqa: F403
