// Array plumbing shared by the pybind11 modules (_native here, _gpu in hip/): the array type every binding takes,
// and the shape checks whose messages say what is wrong.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace medusa_py {

namespace py = pybind11;

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

inline void need_dims(const py::array& a, int nd, const char* what) {
    if (a.ndim() != nd) throw py::value_error(std::string(what) + " must be a " + std::to_string(nd) + "-D array");
}

inline void need_2d(const py::array& a, const char* what) { need_dims(a, 2, what); }

struct GemmShape {
    int N, K, M;
};

// I2_S weights [N, K/4] against quantised activations q [M, K] with one scale per row and one scale and sum per
// token: the shapes every ternary GEMM binding accepts.
inline GemmShape check_ternary_gemm(const Arr<uint8_t>& w, const Arr<float>& wscale, const Arr<int8_t>& q,
                                    const Arr<float>& scale, const Arr<int32_t>& sum) {
    need_2d(w, "I2_S weights");
    need_2d(q, "quantised activations");
    const GemmShape s{(int)w.shape(0), (int)w.shape(1) * 4, (int)q.shape(0)};
    if (s.K % 128) throw py::value_error("I2_S rows must hold a multiple of 128 weights, got " + std::to_string(s.K));
    if ((int)q.shape(1) != s.K)
        throw py::value_error("activations have " + std::to_string(q.shape(1)) + " columns, weights " +
                              std::to_string(s.K));
    if ((int)wscale.size() != s.N || (int)scale.size() != s.M || (int)sum.size() != s.M)
        throw py::value_error("one weight scale per row and one scale and sum per token are needed");
    return s;
}

}  // namespace medusa_py
