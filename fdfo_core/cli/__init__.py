"""Front ends on the command line: `fdfo` (`main`; also `python -m fdfo_core.cli`), the toy demo
(`demo`), the toy's pretraining script (`toy_pretrain`). Nothing else in fdfo_core imports this
package, and nodes/ does not either."""

import os

#: How idle OpenMP threads wait at the end of each parallel region (torch's CPU kernels): the
#: command-line front ends make them sleep at once ("PASSIVE") unless the user set a policy. With
#: GNU OpenMP's default (spin ~300k iterations first), two torch threads on two cores that other
#: processes also use burn their slice spinning while the partner thread waits for a core: the
#: toy model's passes took 15-40x longer and 4-20x more CPU under a load of 14 (issue 28,
#: docs/benchmarks/speed.md). The policy changes no result (the work is split the same way). It
#: must be set before torch is first imported; importing this package sets it.
OPENMP_WAIT_POLICY = "PASSIVE"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = OPENMP_WAIT_POLICY
