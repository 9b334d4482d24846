"""The offline demo: generated datasets and the end-to-end `maskgen demo` run.

Modules (one concept each; nothing else in maskgen imports this package, and it never imports `maskgen.cli`):
  template.py   the MNI152 2009a template from the nilearn wheel, as tissue maps on a coarse grid
  deform.py     random anatomy: affine + elastic deformation of the template (sample / apply)
  contrast.py   MR contrasts rendered from warped tissue maps (sample / apply)
  dataset.py    `generate_demo_dataset`: the demo dataset (MNI anatomy in t1 / t2 / flair), nnU-Net style
  synthetic.py  `make_synthetic_dataset` / `synthetic_volume`: tiny random-blob datasets for fast tests
  writer.py     writing generated datasets as nnU-Net-style folders, swapped into place when complete
  console.py    `build_demo_data`: generate (or reuse) the demo dataset with a progress bar and a summary table
  run.py        `DemoSettings`, `run_demo`: data -> extract -> ERM vs MaskGen -> comparison on unseen contrasts
"""
