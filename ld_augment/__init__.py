"""ld-augment: text-controlled lesion synthesis for 3D CT, as an nnU-Net v2 plugin.

Stages (each sub-package imports only the ones before it):
io -> organs -> reports -> placement -> nets | diffusion | text -> engines -> pipeline -> training -> cli
"""

__version__ = "0.1.0"
