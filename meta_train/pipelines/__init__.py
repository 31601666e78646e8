"""Pipelines built on the meta-training core: each is one command of ``python -m meta_train`` (see ``cli.py``).

=====================  ==================================================================================
module                 what it does
=====================  ==================================================================================
``demo``               ``demo``: the CIFAR-10 task model's neural graph and a brief Adam run on real data
``main_job``           ``main-job`` (``make run``): brief meta-training, then CIFAR-10 evaluation against Adam
``results``            ``results`` (``make results``): the stages of the full Fashion-MNIST -> CIFAR-10 results
``results_plan``       what ``results`` trains, evaluates and sweeps, and where its files go (constants)
``model_cards``        shipping a finished run: checkpoint + model card, ``default.pt``, the checkpoint index
``sweep_report``       the width/depth sweep's paired records, table and figure
``transfer_report``    ``report``: evaluation summaries -> ``results/transfer.json`` / ``transfer.md``
``step_stats``         ``step-stats``: a learned optimizer's update size and direction against Adam's along a run
``weight_space``       ``weight-space``: the weight-space task runs (resumable ``all``) and their report
=====================  ==================================================================================

The core they use (config, unrolls, estimators, the outer loop, inner training, evaluation) is in ``meta_train``
itself and never imports from here.
"""
