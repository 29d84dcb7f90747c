"""Every model of a moerm bundle, owned by the library; the services only wrap them.

- :mod:`~moerm.models.backbones`: backbone families and loading (resolve a reference,
  load offline);
- :mod:`~moerm.models.experts`: the inner layer, K capability experts on one backbone
  (and the task base model), and :mod:`~moerm.models.prefix`, decoder passes that
  compute a shared conversation once;
- :mod:`~moerm.models.aggregator`: the per-task aggregator MLP (numpy);
- :mod:`~moerm.models.classifier`: the outer layer, prompt -> task (numpy over
  :mod:`~moerm.models.embed`'s prompt embeddings).

Importing this package imports nothing: the aggregator and the classifier's weights
load without torch, so the router and aggregator images stay light.
"""
