// pybind11 bindings of the native module `llama_medusa._native`. Thin: shape checks and GIL release, no logic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <thread>

#include "heads.h"

namespace py = pybind11;
using namespace medusa;

namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
std::vector<T> to_vec(const Arr<T>& a) {
    return std::vector<T>(a.data(), a.data() + a.size());
}

void need_2d(const py::array& a, const char* what) {
    if (a.ndim() != 2) throw py::value_error(std::string(what) + " must be a 2-D array");
}

Matrix matrix_from(py::array w, py::object scale) {
    need_2d(w, "projection");
    Matrix m;
    m.rows = (int)w.shape(0);
    m.cols = (int)w.shape(1);
    const auto kind = w.dtype().kind();
    const auto size = w.dtype().itemsize();
    if (kind == 'f' && size == 4) {
        m.dtype = DType::F32;
        m.f32 = to_vec(Arr<float>(w));
    } else if (kind == 'f' && size == 2) {
        m.dtype = DType::F16;
        auto raw = py::array(w.attr("view")(py::dtype("uint16")));
        m.f16 = to_vec(Arr<uint16_t>(raw));
    } else if (kind == 'i' && size == 1) {
        if (scale.is_none()) throw py::value_error("an int8 projection needs one float scale per row");
        m.dtype = DType::I8;
        m.i8 = to_vec(Arr<int8_t>(w));
        m.scale = to_vec(Arr<float>(scale));
    } else {
        throw py::value_error("projection dtype must be float32, float16 or int8 (with scales), got " +
                              std::string(py::str(w.dtype())));
    }
    return m;
}

}  // namespace

PYBIND11_MODULE(_native, mod) {
    mod.doc() = "llama-medusa native kernels (CPU)";

    py::class_<HeadsEngine>(mod, "HeadsEngine")
        .def(py::init([](int hidden, int n_threads) {
                 if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
                 return new HeadsEngine(hidden, n_threads);
             }),
             py::arg("hidden"), py::arg("n_threads") = 0)
        .def("add_projection", [](HeadsEngine& e, py::array w, py::object scale) {
                 return e.add_projection(matrix_from(w, scale));
             },
             py::arg("weight"), py::arg("scale") = py::none(),
             "Adds a [vocab, hidden] projection (float32, float16, or int8 with per-row scales); returns its id.")
        .def("add_head", [](HeadsEngine& e, py::list blocks, int proj) {
                 Head h;
                 h.proj = proj;
                 for (auto item : blocks) {
                     auto t = item.cast<py::tuple>();
                     if (t.size() != 3) throw py::value_error("a block is (w_in, b_in or None, w_out or None)");
                     Block b;
                     Arr<float> w_in(t[0]);
                     need_2d(w_in, "w_in");
                     b.inner = (int)w_in.shape(0);
                     if ((int)w_in.shape(1) != e.hidden())
                         throw py::value_error("w_in has " + std::to_string(w_in.shape(1)) +
                                               " columns, hidden size is " + std::to_string(e.hidden()));
                     b.w_in = to_vec(w_in);
                     if (!t[1].is_none()) b.b_in = to_vec(Arr<float>(t[1]));
                     if (!t[2].is_none()) {
                         Arr<float> w_out(t[2]);
                         need_2d(w_out, "w_out");
                         if ((int)w_out.shape(0) != e.hidden() || (int)w_out.shape(1) != b.inner)
                             throw py::value_error("w_out must be [hidden, inner]");
                         b.w_out = to_vec(w_out);
                     }
                     h.blocks.push_back(std::move(b));
                 }
                 e.add_head(std::move(h));
             },
             py::arg("blocks"), py::arg("proj"))
        .def_property_readonly("hidden", &HeadsEngine::hidden)
        .def_property_readonly("n_heads", &HeadsEngine::n_heads)
        .def_property_readonly("vocab", &HeadsEngine::vocab)
        .def_property("n_threads", &HeadsEngine::n_threads, &HeadsEngine::set_n_threads)
        .def("head_states", [](const HeadsEngine& e, Arr<float> hidden) {
                 need_2d(hidden, "hidden");
                 if ((int)hidden.shape(1) != e.hidden()) throw py::value_error("hidden has the wrong width");
                 const int n = (int)hidden.shape(0);
                 py::array_t<float> out({n, e.n_heads(), e.hidden()});
                 {
                     py::gil_scoped_release nogil;
                     e.head_states(hidden.data(), n, out.mutable_data());
                 }
                 return out;
             })
        .def("topk", [](const HeadsEngine& e, Arr<float> hidden, int k) {
                 need_2d(hidden, "hidden");
                 if ((int)hidden.shape(1) != e.hidden())
                     throw py::value_error("hidden state has width " + std::to_string(hidden.shape(1)) +
                                           ", the heads expect " + std::to_string(e.hidden()));
                 if (e.n_heads() == 0) throw py::value_error("no heads loaded");
                 const int n = (int)hidden.shape(0);
                 py::array_t<int32_t> ids({n, e.n_heads(), k});
                 py::array_t<float> scores({n, e.n_heads(), k});
                 {
                     py::gil_scoped_release nogil;
                     e.topk(hidden.data(), n, k, ids.mutable_data(), scores.mutable_data());
                 }
                 return py::make_tuple(ids, scores);
             },
             py::arg("hidden"), py::arg("k"),
             "Top-k token ids and logits of every head for each hidden row: ([n, K, k] int32, [n, K, k] float32).")
        .def("project", [](const HeadsEngine& e, int proj, Arr<float> x) {
                 need_2d(x, "x");
                 const int m = (int)x.shape(0);
                 py::array_t<float> out({m, e.vocab()});
                 {
                     py::gil_scoped_release nogil;
                     e.project(proj, x.data(), m, out.mutable_data());
                 }
                 return out;
             });
}
