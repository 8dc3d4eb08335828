"""Build the Cython scoring core and install the card's top-level folders under `kairos.*`.

The repository keeps the design card's layout (core/, cluster/, ...) while the installed code
lives in one namespace: `core/` is installed as `kairos.core`, `cluster/` as `kairos.cluster`.
`kairos` itself is an implicit namespace package, so nothing generic lands in site-packages.
"""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

PACKAGE_DIRS = {
    "kairos.core": "core",
    "kairos.core.catalogs": "core/catalogs",
    "kairos.cluster": "cluster",
}


def kernel_extensions() -> list[Extension]:
    """Cythonize core/_kernel.pyx as the top-level module `_kernel` (so Cython finds the
    _kernel.pxd beside it), then install the result as `kairos.core._kernel`."""
    extensions = cythonize(
        [Extension(
            "_kernel",
            ["core/_kernel.pyx"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3", "-fno-math-errno", "-ffp-contract=off"],
        )],
        include_path=["core"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
    )
    for ext in extensions:
        ext.name = "kairos.core." + ext.name
    return extensions


setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"kairos.core": ["catalog.schema.json", "*.pxd"],
                  "kairos.core.catalogs": ["*.yaml"]},
    exclude_package_data={"kairos.core": ["*.c"]},
    ext_modules=kernel_extensions(),
    zip_safe=False,
)
