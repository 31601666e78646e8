"""Weight-space data sets and tasks: networks as inputs.

* ``siren`` / ``inr_zoo``: SIREN INRs fitted (many at once, ``torch.func.vmap``) to MNIST / Fashion-MNIST images;
* ``cnn_zoo``: a heterogeneous zoo of small CNNs trained on Fashion-MNIST / CIFAR-10, each with its test accuracy
  (``cnn_zoo_member``: the architecture, builder and training recipe of one member);
* ``batching``: networks of a zoo -> encoder inputs (batched graphs, normalised weights, StatNN statistics);
* ``task_models`` / ``task_runs``: INR classification, INR editing and CNN generalization prediction on top of the
  ``l2o.encoders`` modules, plus the flattened-weights MLP and StatNN baselines (the models; one training and
  evaluation run of a task);
* ``task_report``: run records -> ``results/weight_space.{json,md}`` and figures;
* ``synthetic``: tiny zoos in the real formats (tests); ``storage``: atomic zoo writes.
"""
