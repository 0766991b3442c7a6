"""The benchmark suite (the README's main job): every backend and peer, over a sweep of shapes.

    python -m bench [--quick | --full] [--threads N] [--repeats N] [--out DIR]
                    [--shape B,T,H,K,V ...] [--lm hidden,layers,heads,T,B]

One registry of rows (:class:`bench.suite.rows.Row`: name, kind, ours or peer, backend, the
timed callable and its flop model) built per shape by :mod:`bench.suite.kernel_rows` (op
forward, decode step, GPU rows), :mod:`bench.suite.train_rows` (op training step, small-LM
train step and forward) and :mod:`bench.suite.layer_rows` (layer vs torchscale's layer); timed
round-robin with medians by :mod:`bench.suite.runner`; written as JSON, Markdown and a PNG plot
by :mod:`bench.suite.report`; the machine's rates come from :mod:`bench.suite.machine`.
"""
