"""tf-slim (``tf.contrib.layers``) over jscope: argument scopes, then the layers.

``arg_scope`` (argument defaults, no JAX) < ``checks`` (argument checks) <
``layers`` (convolutions, fully connected), ``norm`` (batch and layer
normalization), ``basic`` (pooling, flatten, dropout, repeat, stack,
regularizers). The public names are re-exported by ``jscope.slim``.
"""
