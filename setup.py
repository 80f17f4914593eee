"""Map the top-level folders under the ``vmkeep`` package (see docs/DESIGN.md, "Layout").

setuptools' package discovery cannot rename, so the subpackages are listed here;
pyproject.toml holds everything else.
"""

from setuptools import find_packages, setup

FOLDERS = {"agent": "vmkeep.agent", "hypervisors": "vmkeep.hypervisors", "repository": "vmkeep.repository"}

packages = []
package_dir = {}
for folder, name in FOLDERS.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(where=folder):
        packages.append(f"{name}.{sub}")

setup(packages=packages, package_dir=package_dir)
