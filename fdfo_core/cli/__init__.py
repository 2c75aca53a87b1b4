"""Front ends on the command line: `fdfo` (`main`: the parser and the small commands; `train`:
`fdfo train`; `sample`: `fdfo sample`; `options`: what they share; also `python -m fdfo_core.cli`),
the toy demo (`demo`), the toy's pretraining script (`toy_pretrain`). Nothing else in fdfo_core
imports this package, and nodes/ does not either."""
