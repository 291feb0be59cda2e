"""Kernels: Triton programs and their launchers. They know nothing of modules or autograd;
the op layer (``supernet_kernels.ops``) calls them. Triton is imported only when a kernel is
first launched."""
