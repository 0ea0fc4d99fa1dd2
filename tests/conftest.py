import os
import sys

# Tests run on the CPU with one device unless a test asks otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
