"""Graph passes, one per module, each a pure function of a graph (it copies before it edits):

    shapes.py      infer_shapes: every node's output shape (the op table's rules)
    analysis.py    analyse: parameters, MACs, receptive field (the op table's rules)
    rewrite.py     rewrite(graph, rules) -> (graph, changed): the one rewrite driver
    fuse.py        the fusion rules (conv+BN, conv+ReLU, residual epilogue) a backend runs
    fc_to_conv.py  the fully-convolutional form for dense evaluation
    logits.py      drop_output_softmax: the scores before a final softmax

They are run in order by :func:`archdsl.pipeline.lower_graph`.
"""
