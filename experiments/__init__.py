"""``matforge bench science``: the seed papers' experiments as one resumable command.

Experiment 1 (Jia et al.): one smooth backbone pre-trained with each objective (energy,
energy+forces, energy+forces+stress by derivatives, denoising by derivative, denoising with a head)
on one corpus for the same steps with ``matforge pretrain`` (Ray Train), exported, fine-tuned with the
scratch baseline by the fine-tuning harness. Experiment 2 (Deng, Park & Sy): CGCNN pre-trained on
several properties at once against single-property models, the attention-CGCNN against CGCNN, and
the freeze grid. Modules, one job each: :mod:`.plan` and :mod:`.presets` (what to run),
:mod:`.corpus`, :mod:`.property_data` (data), :mod:`.pretraining`, :mod:`.finetuning` (the work),
:mod:`.stages` (skip / select / stop in time), :mod:`.state` (changed settings refused),
:mod:`.results`, :mod:`.tables`, :mod:`.conclusions`, :mod:`.report` (the page),
:mod:`.science` (all of it in order).
"""
