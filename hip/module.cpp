// pybind11 bindings of `llama_medusa._gpu`. Built by the host C++ compiler against api.h only, so the same file
// serves the HIP and the CUDA build. Arrays come in from the host, go through device buffers, and come back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>

#include "api.h"
#include "py_arrays.h"

namespace py = pybind11;
using namespace medusa_gpu;
using medusa_py::Arr;
using medusa_py::need_dims;

namespace {

template <class T>
Buffer to_device(const Arr<T>& a) {
    Buffer b(std::max<size_t>(a.nbytes(), 4));
    b.upload(a.data(), a.nbytes());
    return b;
}

}  // namespace

PYBIND11_MODULE(_gpu, mod) {
    mod.doc() = "llama-medusa GPU kernels (HIP or CUDA)";
#if defined(MEDUSA_GPU_HIP)
    mod.attr("backend") = "hip";
#else
    mod.attr("backend") = "cuda";
#endif
    mod.def("device_count", &device_count, "Usable GPUs; 0 when there is no device or driver.");
    mod.def("device_name", &device_name);
    mod.def("warp_size", &warp_size_compiled, "The warp width the device code was compiled for.");
    mod.def("mma_available", &ternary_mma_available);

    mod.def("quantize_acts", [](Arr<float> x) {
            need_dims(x, 2, "activations");
            const int M = (int)x.shape(0), K = (int)x.shape(1);
            Buffer dx = to_device(x), dq((size_t)M * K), ds(M * 4), dsum(M * 4);
            quantize_acts((const float*)dx.data(), (int8_t*)dq.data(), (float*)ds.data(), (int32_t*)dsum.data(), M, K);
            py::array_t<int8_t> q({M, K});
            py::array_t<float> s(M);
            py::array_t<int32_t> sum(M);
            dq.download(q.mutable_data(), q.nbytes());
            ds.download(s.mutable_data(), s.nbytes());
            dsum.download(sum.mutable_data(), sum.nbytes());
            return py::make_tuple(q, s, sum);
        },
        py::arg("x"));

    mod.def("ternary_gemm", [](Arr<uint8_t> w, Arr<float> wscale, Arr<int8_t> q, Arr<float> scale, Arr<int32_t> sum,
                               int kernel) {
            const auto [N, K, M] = medusa_py::check_ternary_gemm(w, wscale, q, scale, sum);
            Buffer dw = to_device(w), dws = to_device(wscale), dq = to_device(q), ds = to_device(scale),
                   dsum = to_device(sum), dy((size_t)M * N * 4);
            ternary_gemm((const uint8_t*)dw.data(), (const float*)dws.data(), (const int8_t*)dq.data(),
                         (const float*)ds.data(), (const int32_t*)dsum.data(), (float*)dy.data(), N, K, M, kernel);
            py::array_t<float> y({M, N});
            dy.download(y.mutable_data(), y.nbytes());
            return y;
        },
        py::arg("w"), py::arg("wscale"), py::arg("q"), py::arg("scale"), py::arg("sum"), py::arg("kernel") = 0,
        "Ternary GEMM on the device; kernel 0 = best available, 1 = dp4a, 2 = tensor-core mma.");

    mod.def("tree_attention", [](Arr<float> q, py::array k, py::array v, Arr<uint32_t> anc, int chunk, py::object scale) {
            need_dims(q, 3, "q");
            need_dims(k, 3, "k");
            need_dims(v, 3, "v");
            need_dims(anc, 2, "ancestor mask");
            if (k.dtype().kind() != 'f' || k.dtype().itemsize() != 2 || v.dtype().kind() != 'f' ||
                v.dtype().itemsize() != 2)
                throw py::value_error("k and v must be float16 (the KV cache type)");
            const int T = (int)q.shape(0), Hq = (int)q.shape(1), D = (int)q.shape(2);
            const int L = (int)k.shape(0), Hkv = (int)k.shape(1);
            if (k.shape(2) != D || v.shape(0) != L || v.shape(1) != Hkv || v.shape(2) != D)
                throw py::value_error("k and v must both be [L, Hkv, D] with q's D");
            if (anc.shape(0) != T || anc.shape(1) != (T + 31) / 32)
                throw py::value_error("the ancestor mask must be [T, ceil(T/32)] uint32");
            const float sc = scale.is_none() ? 1.0f / std::sqrt((float)D) : scale.cast<float>();
            Arr<uint16_t> k16(k.attr("view")(py::dtype("uint16"))), v16(v.attr("view")(py::dtype("uint16")));
            Buffer dq = to_device(q), dk = to_device(k16), dv = to_device(v16), da = to_device(anc),
                   dout((size_t)T * Hq * D * 4), work(tree_attention_work_bytes(T, Hq, D, L, std::max(chunk, 1)));
            tree_attention((const float*)dq.data(), (const uint16_t*)dk.data(), (const uint16_t*)dv.data(),
                           (const uint32_t*)da.data(), (float*)dout.data(), work.data(), T, Hq, Hkv, D, L, chunk, sc);
            py::array_t<float> out({T, Hq, D});
            dout.download(out.mutable_data(), out.nbytes());
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("anc"), py::arg("chunk") = 256, py::arg("scale") = py::none());

    py::class_<HeadsEngine>(mod, "HeadsEngine")
        .def(py::init<int>(), py::arg("hidden"))
        .def("add_projection", [](HeadsEngine& e, py::array w) {
                 need_dims(w, 2, "projection");
                 Arr<float> f(w);
                 // the device keeps f16: convert through numpy so rounding is numpy's (round to nearest even)
                 py::array h = py::module_::import("numpy").attr("ascontiguousarray")(f.attr("astype")("float16"));
                 Arr<uint16_t> raw(h.attr("view")(py::dtype("uint16")));
                 return e.add_projection(raw.data(), (int)w.shape(0), (int)w.shape(1));
             },
             py::arg("weight"), "Adds a [vocab, hidden] projection, stored as float16 on the device.")
        .def("add_head", [](HeadsEngine& e, py::list blocks, int proj) {
                 std::vector<Arr<float>> keep;
                 std::vector<std::vector<const float*>> ptrs;
                 std::vector<int> inner;
                 std::vector<bool> has_b, has_o;
                 for (auto item : blocks) {
                     auto t = item.cast<py::tuple>();
                     if (t.size() != 3) throw py::value_error("a block is (w_in, b_in or None, w_out or None)");
                     Arr<float> w_in(t[0]);
                     need_dims(w_in, 2, "w_in");
                     if ((int)w_in.shape(1) != e.hidden()) throw py::value_error("w_in does not fit the hidden size");
                     const int in = (int)w_in.shape(0);
                     std::vector<const float*> p{w_in.data(), nullptr, nullptr};
                     keep.push_back(w_in);
                     has_b.push_back(!t[1].is_none());
                     if (!t[1].is_none()) {
                         Arr<float> b(t[1]);
                         if ((int)b.size() != in) throw py::value_error("b_in does not fit w_in");
                         keep.push_back(b);
                         p[1] = b.data();
                     }
                     has_o.push_back(!t[2].is_none());
                     if (!t[2].is_none()) {
                         Arr<float> o(t[2]);
                         need_dims(o, 2, "w_out");
                         if ((int)o.shape(0) != e.hidden() || (int)o.shape(1) != in)
                             throw py::value_error("w_out must be [hidden, inner]");
                         keep.push_back(o);
                         p[2] = o.data();
                     }
                     ptrs.push_back(p);
                     inner.push_back(in);
                 }
                 e.add_head(ptrs, inner, has_b, has_o, proj);
             },
             py::arg("blocks"), py::arg("proj"))
        .def_property_readonly("hidden", &HeadsEngine::hidden)
        .def_property_readonly("n_heads", &HeadsEngine::n_heads)
        .def_property_readonly("vocab", &HeadsEngine::vocab)
        .def("head_states", [](HeadsEngine& e, Arr<float> hidden) {
                 need_dims(hidden, 2, "hidden");
                 if ((int)hidden.shape(1) != e.hidden()) throw py::value_error("hidden state width does not match the heads");
                 const int n = (int)hidden.shape(0);
                 py::array_t<float> out({n, e.n_heads(), e.hidden()});
                 e.head_states(hidden.data(), n, out.mutable_data());
                 return out;
             })
        .def("topk", [](HeadsEngine& e, Arr<float> hidden, int k) {
                 need_dims(hidden, 2, "hidden");
                 if ((int)hidden.shape(1) != e.hidden())
                     throw py::value_error("hidden state has width " + std::to_string(hidden.shape(1)) +
                                           ", the heads expect " + std::to_string(e.hidden()));
                 const int n = (int)hidden.shape(0);
                 py::array_t<int32_t> ids({n, e.n_heads(), k});
                 py::array_t<float> scores({n, e.n_heads(), k});
                 e.topk(hidden.data(), n, k, ids.mutable_data(), scores.mutable_data());
                 return py::make_tuple(ids, scores);
             },
             py::arg("hidden"), py::arg("k"));

    mod.def("copy_bandwidth", &copy_bandwidth, py::arg("bytes"), py::arg("reps") = 20,
            "Device-to-device copy rate in bytes/s, counting bytes read and written (median).");
    mod.def("time_ternary_sequence", &time_ternary_sequence, py::arg("shapes"), py::arg("M"), py::arg("reps") = 20,
            py::arg("kernel") = 0, "Median seconds of one graph replay of ternary GEMMs over the (N, K) shapes.");
}
