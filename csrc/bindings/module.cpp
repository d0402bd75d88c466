// pybind11 glue: argument marshalling, GIL release around every blocking call, and the mapping of
// C++ error codes to the exception classes in pccl_py.errors. No logic lives here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "common/error.hpp"
#include "common/log.hpp"
#include "coordinator/master.hpp"
#include "kernels/codec.hpp"
#include "kernels/hash.hpp"
#include "peer/async_op.hpp"
#include "peer/communicator.hpp"
#include "peer/op_router.hpp"

namespace py = pybind11;
using namespace pccl;

namespace {

const char* exception_name(ErrorCode code) {
    switch (code) {
        case ErrorCode::kInvalidArgument: return "InvalidArgumentError";
        case ErrorCode::kPeerLost: return "PeerLostError";
        case ErrorCode::kTimeout: return "TimeoutError";
        case ErrorCode::kMasterLost: return "MasterLostError";
        case ErrorCode::kEvicted: return "EvictedError";
        case ErrorCode::kMismatch: return "MismatchError";
        case ErrorCode::kClosed: return "ClosedError";
        case ErrorCode::kAuth: return "AuthenticationError";
        default: return "PCCLError";
    }
}

void check_dtype_and_quant(int dtype, int quant) {
    if (dtype < 0 || dtype >= static_cast<int>(DType::kCount)) throw Error(ErrorCode::kInvalidArgument, "unknown dtype code");
    if (quant < 0 || quant >= static_cast<int>(Quant::kCount)) throw Error(ErrorCode::kInvalidArgument, "unknown quantization code");
    if (!quant_supports(static_cast<Quant>(quant), static_cast<DType>(dtype)))
        throw Error(ErrorCode::kInvalidArgument, std::string("quantization ") + quant_name(static_cast<Quant>(quant)) +
                                                     " applies to float32 and float64 tensors only, not " +
                                                     dtype_name(static_cast<DType>(dtype)));
}

CollectiveSpec make_spec(uintptr_t src, uintptr_t dst, size_t count, int dtype, int op, uint32_t tag, int algorithm,
                         int quant) {
    if (op < 0 || op >= static_cast<int>(ReduceOp::kCount)) throw Error(ErrorCode::kInvalidArgument, "unknown op code");
    if (algorithm < 0 || algorithm > 2) throw Error(ErrorCode::kInvalidArgument, "unknown algorithm code");
    check_dtype_and_quant(dtype, quant);
    CollectiveSpec s;
    s.src = reinterpret_cast<const uint8_t*>(src);
    s.dst = reinterpret_cast<uint8_t*>(dst);
    s.count = count;
    s.dtype = static_cast<DType>(dtype);
    s.op = static_cast<ReduceOp>(op);
    s.tag = tag;
    s.algorithm = static_cast<Algorithm>(algorithm);
    s.quant = static_cast<Quant>(quant);
    return s;
}

py::dict to_dict(const ReduceResult& r) {
    py::dict d;
    d["world_size"] = r.world_size;
    d["rank"] = r.rank;
    d["tx_bytes"] = r.tx_bytes;
    d["rx_bytes"] = r.rx_bytes;
    d["swapped_bytes"] = r.swapped_bytes;
    d["algorithm"] = r.algorithm == Algorithm::kStar ? "star" : r.algorithm == Algorithm::kRing ? "ring"
                     : "p2p";
    d["epoch"] = r.epoch;
    d["retries"] = r.retries;
    d["peers_pending"] = r.peers_pending;
    return d;
}

P2PSpec make_p2p(bool send, int peer, uintptr_t addr, size_t count, int dtype, uint32_t tag) {
    check_dtype_and_quant(dtype, 0);
    P2PSpec s;
    s.send = send;
    s.peer = peer;
    s.src = reinterpret_cast<const uint8_t*>(addr);
    s.dst = reinterpret_cast<uint8_t*>(addr);
    s.count = count;
    s.dtype = static_cast<DType>(dtype);
    s.tag = tag;
    return s;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pccl_py C++ core";

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error& e) {
            py::object errors = py::module_::import("pccl_py.errors");
            py::object cls = errors.attr(exception_name(e.code()));
            PyErr_SetString(cls.ptr(), e.what());
        }
    });

    m.def("set_log_level", [](int level) { set_log_level(static_cast<LogLevel>(level)); });
    // For tests: feeds `frames` well-formed frame headers of `length` payload bytes, for operations not
    // started (tag 1, seq 1, 2, ...), to a fresh data-frame router, as a member far ahead would send
    // them; returns how many it held before refusing one, and its reason ("" if none was refused).
    m.def("_router_hold_probe", [](uint64_t frames, uint32_t length) {
        uint64_t held = 0;
        std::string why;
        {
        py::gil_scoped_release release;
        OpRouter router([](int, const std::string&) {});
        std::vector<uint8_t> payload(length, 0x5a);
        for (uint64_t i = 0; i < frames; ++i) {
            FrameHeader h{};
            h.magic = kFrameMagic;
            h.type = static_cast<uint8_t>(length ? FrameType::kData : FrameType::kDone);
            h.tag = 1;
            h.seq = i + 1;
            h.count = length;
            h.length = length;
            try {
                RecvTarget t = router.on_header(0, h);
                if (length && t.dst) std::memcpy(t.dst, payload.data(), length);
                router.on_frame(0, h, t);
            } catch (const ProtocolError& e) {
                why = e.what();
                break;
            }
            ++held;
        }
        }
        return py::make_tuple(held, why);
    }, py::arg("frames"), py::arg("length"));
    m.def("content_hash", [](uintptr_t addr, size_t bytes) { return content_hash(reinterpret_cast<const void*>(addr), bytes); },
          py::call_guard<py::gil_scoped_release>());
    m.def("copy_bytes", [](uintptr_t dst, uintptr_t src, size_t bytes) {
        if (bytes) std::memcpy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    }, py::call_guard<py::gil_scoped_release>());

    // dst = decode(encode(src)), blocks starting at src[0]: what error feedback subtracts. dst may be src.
    m.def("quantize_roundtrip", [](int quant, int dtype, uintptr_t src, uintptr_t dst, size_t count) {
        check_dtype_and_quant(dtype, quant);
        py::gil_scoped_release release;
        quantize_roundtrip(static_cast<Quant>(quant), static_cast<DType>(dtype), reinterpret_cast<const void*>(src),
                           count, reinterpret_cast<void*>(dst));
    }, py::arg("quant_code"), py::arg("dtype_code"), py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("count"));

    py::class_<Master>(m, "Master")
        .def(py::init([](std::string host, uint16_t port, py::bytes secret, double handshake_timeout,
                         uint32_t max_unauthenticated, uint32_t max_unauthenticated_per_source, uint64_t max_preauth_bytes,
                         uint32_t max_pending_per_group, uint32_t max_group_size, bool encrypt) {
                 MasterLimits limits;
                 limits.handshake_timeout = handshake_timeout;
                 limits.max_unauthenticated = max_unauthenticated;
                 limits.max_unauthenticated_per_source = max_unauthenticated_per_source;
                 limits.max_preauth_bytes = max_preauth_bytes;
                 limits.max_pending_per_group = max_pending_per_group;
                 limits.max_group_size = max_group_size;
                 return std::make_unique<Master>(std::move(host), port, std::string(secret), encrypt, limits);
             }),
             py::arg("host"), py::arg("port"), py::arg("secret") = py::bytes(),
             py::arg("handshake_timeout") = MasterLimits{}.handshake_timeout,
             py::arg("max_unauthenticated") = MasterLimits{}.max_unauthenticated,
             py::arg("max_unauthenticated_per_source") = MasterLimits{}.max_unauthenticated_per_source,
             py::arg("max_preauth_bytes") = MasterLimits{}.max_preauth_bytes,
             py::arg("max_pending_per_group") = MasterLimits{}.max_pending_per_group,
             py::arg("max_group_size") = MasterLimits{}.max_group_size, py::arg("encrypt") = false)
        .def("start", &Master::start, py::call_guard<py::gil_scoped_release>())
        .def("stop", &Master::stop, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("port", &Master::port)
        .def_property_readonly("host", &Master::host);

    py::class_<AsyncOp>(m, "AsyncOp")
        .def("done", &AsyncOp::done)
        .def("wait", [](AsyncOp& op) {
            ReduceResult r;
            {
                py::gil_scoped_release release;
                r = op.wait();
            }
            return to_dict(r);
        });

    py::class_<Communicator>(m, "Communicator")
        .def(py::init([](std::string master, uint32_t group, int conns, double timeout, double hb, double join,
                         std::string listen_host, uint16_t listen_port, std::string advertise_host,
                         uint16_t advertise_port, double master_grace, bool swap_result_pages, py::bytes secret,
                         bool encrypt) {
                 CommConfig c;
                 c.master_address = std::move(master);
                 c.group = group;
                 c.connections = conns;
                 c.timeout = timeout;
                 c.heartbeat_timeout = hb;
                 c.join_timeout = join;
                 c.listen_host = std::move(listen_host);
                 c.listen_port = listen_port;
                 c.advertise_host = std::move(advertise_host);
                 c.advertise_port = advertise_port;
                 c.master_grace = master_grace;
                 c.swap_result_pages = swap_result_pages;
                 c.secret = std::string(secret);
                 c.encrypt = encrypt;
                 return std::make_unique<Communicator>(std::move(c));
             }),
             py::arg("master_address"), py::arg("peer_group"), py::arg("connections_per_peer"), py::arg("timeout"),
             py::arg("heartbeat_timeout"), py::arg("join_timeout"), py::arg("listen_host"), py::arg("listen_port"),
             py::arg("advertise_host"), py::arg("advertise_port"), py::arg("master_grace"),
             py::arg("swap_result_pages"), py::arg("secret") = py::bytes(), py::arg("encrypt") = false)
        .def("connect", &Communicator::connect, py::call_guard<py::gil_scoped_release>())
        .def("update_topology", &Communicator::update_topology, py::call_guard<py::gil_scoped_release>())
        .def("are_peers_pending", &Communicator::peers_pending)
        .def("close", &Communicator::close, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("world_size", &Communicator::world_size)
        .def_property_readonly("rank", &Communicator::rank)
        .def_property_readonly("epoch", &Communicator::epoch)
        .def_property_readonly("peer_id", &Communicator::peer_id)
        .def("check_usable", [](Communicator& c, const std::string& what) { c.check_usable(what.c_str()); })
        // Fault injection for tests/test_hostile.py: a FAILURE report as a malicious member would send it.
        .def("_send_failure_report", &Communicator::send_failure_report, py::arg("epoch"), py::arg("kind"), py::arg("suspect"))
        .def("all_reduce",
             [](Communicator& c, uintptr_t src, uintptr_t dst, size_t count, int dtype, int op, uint32_t tag, int algo,
                int quant) {
                 CollectiveSpec s = make_spec(src, dst, count, dtype, op, tag, algo, quant);
                 ReduceResult r;
                 {
                     py::gil_scoped_release release;
                     r = c.all_reduce(s);
                 }
                 return to_dict(r);
             })
        // send=True: addr is the message; False: where it is published. peer: rank in the current epoch.
        .def("p2p",
             [](Communicator& c, bool send, int peer, uintptr_t addr, size_t count, int dtype, uint32_t tag,
                uint64_t planned_epoch) {
                 P2PSpec s = make_p2p(send, peer, addr, count, dtype, tag);
                 s.planned_epoch = planned_epoch;
                 ReduceResult r;
                 {
                     py::gil_scoped_release release;
                     r = c.p2p(s);
                 }
                 return to_dict(r);
             },
             py::arg("send"), py::arg("peer"), py::arg("addr"), py::arg("count"), py::arg("dtype"), py::arg("tag"),
             py::arg("planned_epoch") = 0)
        .def("p2p_async",
             [](Communicator& c, bool send, int peer, uintptr_t addr, size_t count, int dtype, uint32_t tag,
                uint64_t planned_epoch) {
                 P2PSpec s = make_p2p(send, peer, addr, count, dtype, tag);
                 s.planned_epoch = planned_epoch;
                 return std::make_unique<AsyncOp>(c, s);
             },
             py::arg("send"), py::arg("peer"), py::arg("addr"), py::arg("count"), py::arg("dtype"), py::arg("tag"),
             py::arg("planned_epoch") = 0, py::keep_alive<0, 1>())
        .def("all_reduce_async",
             [](Communicator& c, uintptr_t src, uintptr_t dst, size_t count, int dtype, int op, uint32_t tag, int algo,
                int quant) {
                 CollectiveSpec s = make_spec(src, dst, count, dtype, op, tag, algo, quant);
                 return std::make_unique<AsyncOp>(c, s);
             },
             py::keep_alive<0, 1>());
}
