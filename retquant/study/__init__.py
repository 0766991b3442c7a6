"""The quantization study (issue 12): train a small RetNet LM on Shakespeare in fp32, then
compare quantization strategies by validation perplexity and measure op-level errors.

Run it with ``python -m retquant.study --quick`` (see :mod:`retquant.study.__main__`); the parts:
:mod:`~retquant.study.data` (fetch, split by work, byte tokenizer), :mod:`~retquant.study.train`,
:mod:`~retquant.study.evaluate`, :mod:`~retquant.study.strategies`,
:mod:`~retquant.study.hadamard`, :mod:`~retquant.study.op_sweep`, :mod:`~retquant.study.report`,
:mod:`~retquant.study.runner`. Nothing else in retquant imports this package.
"""
