"""Weight-space data sets and tasks: networks as inputs.

* ``siren`` / ``inr_zoo``: SIREN INRs fitted (many at once, ``torch.func.vmap``) to MNIST / Fashion-MNIST images;
* ``cnn_zoo``: a heterogeneous zoo of small CNNs trained on Fashion-MNIST / CIFAR-10, each with its test accuracy;
* ``models`` / ``train``: INR classification, INR editing and CNN generalization prediction on top of the
  ``l2o.encoders`` modules, plus the flattened-weights MLP and StatNN baselines.
"""
