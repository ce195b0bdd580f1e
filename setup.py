"""Build of cliptbp_kernels: a setuptools build_ext that drives CMake (CMakeLists.txt).

    pip install .                               # regular install
    pip install --no-build-isolation -e .       # editable (development) install

Environment switches:

    CLIPTBP_CUDA        auto (default): build cliptbp_kernels._C_cuda when nvcc is found;
                        1: require it (fail when no nvcc); 0: skip it (CPU-only package).
    CLIPTBP_CUDA_EMU    1 (default): also build cliptbp_kernels._C_cuda_emu, the CUDA kernels
                        compiled for the CPU emulation (how the tests run them without a GPU;
                        host compiler only); 0: skip it.
    CLIPTBP_CUDA_ARCH   CUDA architectures, CMake syntax (default "80;90"; e.g. "90a", "native").
    CLIPTBP_BUILD_JOBS  parallel compile jobs (default: the number of CPUs).
    CLIPTBP_BUILD_TYPE  Release (default), Debug or RelWithDebInfo.
    CLIPTBP_SANITIZE    1: build _C_cpu with -fsanitize=address,undefined.
    CLIPTBP_CMAKE_ARGS  extra arguments for the CMake configure step (split like a shell).
    CLIPTBP_BUILD_DIR   the CMake build tree to use (default: see below).
    CUDACXX             the nvcc to use (else PATH, $CUDA_HOME/bin, /usr/local/cuda/bin).

nvcc is looked for in $CUDACXX, on PATH, in $CUDA_HOME/bin, $CUDA_PATH/bin and
/usr/local/cuda/bin. Without one the package is CPU-only and the CMake log says so once.
Editable installs keep one CMake tree per configuration in build/cmake-editable-*/, so
reinstalling only recompiles what changed; other builds use setuptools' build_temp.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
MIN_CMAKE = (3, 18)
CPU_MODULE = "cliptbp_kernels._C_cpu"
CUDA_MODULE = "cliptbp_kernels._C_cuda"
EMU_MODULE = "cliptbp_kernels._C_cuda_emu"


def _log(msg):
    print(f"cliptbp_kernels: {msg}", flush=True)


def _env(name, default=""):
    return os.environ.get(name, default).strip()


def _cmake_version(exe):
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _find_cmake():
    """The first cmake >= 3.18: the one of the pip `cmake` package, then PATH."""
    candidates = []
    try:
        import cmake  # the pip package (a build requirement in pyproject.toml)

        candidates.append(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))
    except Exception:
        pass
    which = shutil.which("cmake")
    if which:
        candidates.append(which)
    seen = []
    for exe in candidates:
        version = _cmake_version(exe)
        if version is not None and version >= MIN_CMAKE:
            return exe
        seen.append(f"{exe} ({'.'.join(map(str, version)) if version else 'does not run'})")
    raise SetupError(
        "cmake >= %d.%d not found: pip install cmake%s"
        % (MIN_CMAKE + ("" if not seen else " (found: " + ", ".join(seen) + ")",))
    )


def _find_ninja():
    try:
        import ninja  # the pip package

        exe = os.path.join(ninja.BIN_DIR, "ninja")
        if os.path.exists(exe):
            return exe
    except Exception:
        pass
    return shutil.which("ninja")


def _pybind11_cmake_dir():
    try:
        import pybind11
    except ImportError:
        raise SetupError("pybind11 not found: pip install pybind11 (>= 2.10)") from None
    return pybind11.get_cmake_dir()


def _check_cxx_compiler():
    cxx = _env("CXX")
    if cxx:
        exe = shlex.split(cxx)[0]
        if shutil.which(exe) is None:
            raise SetupError(f"no C++ compiler: CXX={cxx!r} is not an executable")
        return
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return
    raise SetupError("no C++ compiler found (c++, g++, clang++): install g++ (>= 9) or set CXX")


def _find_nvcc():
    cudacxx = _env("CUDACXX")
    if cudacxx:
        return cudacxx if shutil.which(cudacxx) else None
    which = shutil.which("nvcc")
    if which:
        return which
    for base in (_env("CUDA_HOME"), _env("CUDA_PATH"), "/usr/local/cuda"):
        if base:
            exe = os.path.join(base, "bin", "nvcc")
            if os.path.isfile(exe) and os.access(exe, os.X_OK):
                return exe
    return None


def _cuda_mode():
    value = _env("CLIPTBP_CUDA", "auto").lower()
    if value in ("", "auto"):
        return "AUTO"
    if value in ("1", "on", "true", "yes"):
        return "ON"
    if value in ("0", "off", "false", "no"):
        return "OFF"
    raise SetupError(f"CLIPTBP_CUDA must be auto, 1 or 0, not {value!r}")


def _build_type():
    value = _env("CLIPTBP_BUILD_TYPE", "Release") or "Release"
    for name in ("Release", "Debug", "RelWithDebInfo", "MinSizeRel"):
        if value.lower() == name.lower():
            return name
    raise SetupError(f"CLIPTBP_BUILD_TYPE must be Release, Debug or RelWithDebInfo, not {value!r}")


def _build_jobs():
    value = _env("CLIPTBP_BUILD_JOBS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise SetupError(f"CLIPTBP_BUILD_JOBS must be a positive integer, not {value!r}")
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _flag(name):
    return _env(name, "0").lower() in ("1", "on", "true", "yes")


class CMakeExtension(Extension):
    """An extension module built by CMakeLists.txt (no sources of its own for setuptools)."""

    def __init__(self, name, target):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt once, then copy each module to get_ext_fullpath."""

    def build_extensions(self):
        cuda_mode = _cuda_mode()
        nvcc = None
        if cuda_mode != "OFF":
            nvcc = _find_nvcc()
            if nvcc is None and cuda_mode == "ON":
                raise SetupError(
                    "CLIPTBP_CUDA=1 but no nvcc found (looked at $CUDACXX, PATH, $CUDA_HOME/bin, "
                    "$CUDA_PATH/bin, /usr/local/cuda/bin): install the CUDA toolkit or set "
                    "CUDACXX=/path/to/nvcc"
                )
        _check_cxx_compiler()
        cmake = _find_cmake()
        ninja = _find_ninja()
        pybind11_dir = _pybind11_cmake_dir()
        build_type = _build_type()
        sanitize = _flag("CLIPTBP_SANITIZE")
        emu = _env("CLIPTBP_CUDA_EMU", "1").lower() not in ("0", "off", "false", "no")
        arch = _env("CLIPTBP_CUDA_ARCH", "80;90") or "80;90"
        extra = shlex.split(_env("CLIPTBP_CMAKE_ARGS"))

        args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11_dir}",
            f"-DCLIPTBP_CUDA={cuda_mode}",
            f"-DCLIPTBP_CUDA_ARCH={arch}",
            f"-DCLIPTBP_SANITIZE={'ON' if sanitize else 'OFF'}",
            f"-DCLIPTBP_CUDA_EMU={'ON' if emu else 'OFF'}",
        ]
        if ninja:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        else:
            _log("ninja not found (pip install ninja): using CMake's default generator")
        args += extra
        env = dict(os.environ)
        if nvcc is not None:
            env["CUDACXX"] = nvcc

        # One CMake tree per configuration (interpreter, pybind11, compilers, options): a
        # stale CMakeCache.txt would silently keep an old configuration.
        key = "\n".join([cmake, str(ninja), sys.executable,
                         sysconfig.get_config_var("EXT_SUFFIX") or "", _env("CXX"), _env("CC"),
                         _env("CXXFLAGS"), str(nvcc)] + args)
        build_dir = self._cmake_build_dir(pybind11_dir, key)
        out_dir = build_dir / "cliptbp_kernels"
        args.append(f"-DCLIPTBP_OUTPUT_DIR={out_dir}")
        stamp = build_dir / "cliptbp-config.txt"
        if build_dir.exists() and (not stamp.exists() or stamp.read_text() != key):
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)

        jobs = _build_jobs()
        self._run([cmake, "-S", str(ROOT), "-B", str(build_dir)] + args, env, "CMake configure")
        stamp.write_text(key)
        self._run([cmake, "--build", str(build_dir), "--parallel", str(jobs)], env, "CMake build")

        built = []
        for ext in list(self.extensions):
            dest = Path(self.get_ext_fullpath(ext.name))
            if dest.exists():
                dest.unlink()  # never ship a stale module from an earlier build
            found = sorted(p for p in out_dir.glob(ext.target + ".*")
                           if p.suffix in (".so", ".pyd"))
            if not found:
                if (ext.name == CUDA_MODULE and cuda_mode != "ON") or (ext.name == EMU_MODULE
                                                                         and not emu):
                    self.extensions.remove(ext)  # CPU-only package (CMake said why)
                    if getattr(self, "editable_mode", False) or self.inplace:
                        # an in-place module of an earlier CUDA build would shadow this one
                        for stale in (ROOT / "cliptbp_kernels").glob(ext.target + ".*"):
                            if stale.suffix in (".so", ".pyd"):
                                stale.unlink()
                    continue
                raise SetupError(f"the CMake build did not produce {ext.target} in {out_dir}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[0], dest)
            built.append(ext.name.rsplit(".", 1)[1])
        _log(f"built {', '.join(built)} ({build_type}, CMake tree {build_dir})")

    def _cmake_build_dir(self, pybind11_dir, key):
        override = _env("CLIPTBP_BUILD_DIR")
        if override:
            return Path(override).resolve()
        # Editable installs build in a throwaway build_temp; keep the CMake tree in the
        # source tree instead (incremental rebuilds), unless this is an isolated build env.
        isolated = not os.path.realpath(pybind11_dir).startswith(os.path.realpath(sys.prefix))
        if getattr(self, "editable_mode", False) and not isolated:
            tag = hashlib.sha1(key.encode()).hexdigest()[:10]
            return ROOT / "build" / f"cmake-editable-{sysconfig.get_platform()}-{tag}"
        return Path(self.build_temp).resolve() / "cmake"

    @staticmethod
    def _run(cmd, env, what):
        print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        try:
            subprocess.run(cmd, env=env, check=True)
        except FileNotFoundError as e:
            raise SetupError(f"{what} failed: {e}") from None
        except subprocess.CalledProcessError as e:
            raise SetupError(
                f"{what} failed (exit code {e.returncode}); the reason is in the output above"
            ) from None


setup(
    ext_modules=[
        CMakeExtension(CPU_MODULE, "_C_cpu"),
        CMakeExtension(CUDA_MODULE, "_C_cuda"),
        CMakeExtension(EMU_MODULE, "_C_cuda_emu"),
    ],
    cmdclass={"build_ext": CMakeBuild},
)
