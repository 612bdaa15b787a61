DEFAULTS={}
def divisor(**k): return 32
build_vmunet3d=None
