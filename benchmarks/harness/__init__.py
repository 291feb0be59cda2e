"""The benchmark harness: what every ``bench_<op>.py`` shares (``import harness as H``).

* :mod:`.timers`: the runner's measuring half: ``triton.testing.do_bench`` medians over rotating
  input sets (so that L2 does not flatter), CUDA-graph replay, the CPU fallback, the ceilings
  measured in the run, the GPU name, commit and versions of every record;
* :mod:`.records`: the one record schema, JSON lines, the per-call roofline, old records read
  through ``normalize``;
* :mod:`.run`: the command line (``--smoke``, ``--quick``, ``--out``, ``--m/--k/--n``
  filters...), the loop over a module's declared sweeps and implementations, the ratio to the
  dense layer, the report at the end and the dispatch-table writing;
* :mod:`.models`: the same for whole-model benchmarks (bench_models.py, bench_latency_table.py):
  their record kinds, the loop over a module's records with its time budget, a module's timing
  (eager, compiled, graph-replayed; peak memory), the report and the summary.
"""

from .models import *  # noqa: F403
from .records import *  # noqa: F403
from .run import *  # noqa: F403
from .timers import *  # noqa: F403
