"""image_track: the paper's classifier experiments (ResNet-18 / CIFAR-10; digits on CPU) through llm_unlearn's
stages contract, ``METHODS`` and metrics. Imports ``llm_unlearn``; ``llm_unlearn`` never imports it: ``llm-unlearn
run`` finds it through the ``llm_unlearn.tracks`` entry point ``image = "image_track.track:TRACK"``.

Modules: ``models`` (cnn, resnet18, mlp, linear in plain torch.nn), ``data`` (digits, CIFAR through ``datasets``,
crop/flip as tensor ops), ``attacks`` (gaussian, badnets, witches_brew, gradient_canceling), ``training``,
``stages`` (poison, train, unlearn, evaluate, diagnose) and ``track`` (the experiment config and planner).
"""
