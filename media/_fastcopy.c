/* The two per-packet steps of a forwarding unit in C: a publisher's SRTP packet verified and
 * parsed in one call, and each subscriber's copy patched, protected and sent in one call.
 *
 * The pure-Python path (aiortc's RtpPacket.parse, media/rtpcopy.py, media/aiortc_adapter.py)
 * does the same in several calls and copies; this is its twin. The SRTP sessions are the ones
 * aiortc's DTLS transport made (libsrtp inside pylibsrtp): their addresses and those of
 * libsrtp's srtp_protect and srtp_unprotect are handed over from Python, so this module links
 * to no library and each session's state (rollover counter, replay list) stays one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr). */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* Room for the largest packet we forward and libsrtp's longest trailer (tag and MKI). */
#define BUFFER 4096
#define TRAILER 144

/* pylibsrtp's own limit on what it unprotects: a longer datagram is refused there too. */
#define RECEIVED 1500

static protect_fn protect = NULL;
static protect_fn unprotect = NULL;

static PyObject *bind_protect(PyObject *self, PyObject *arg) {
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    protect = (protect_fn)(uintptr_t)address;
    Py_RETURN_NONE;
}

static PyObject *sockaddr(PyObject *self, PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port))
        return NULL;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&v4, sizeof v4);
    }
    if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&v6, sizeof v6);
    }
    PyErr_SetString(PyExc_ValueError, "not a numeric address");
    return NULL;
}

/* An optional argument: -1 (or None) when absent, else an integer. */
static int optional(PyObject *o, long long *out) {
    if (o == Py_None) {
        *out = -1;
        return 0;
    }
    *out = PyLong_AsLongLong(o);
    return PyErr_Occurred() ? -1 : 0;
}

/* copy(fd, sockaddr, session, template, marker_pt, seq, timestamp,
 *      abs_at, abs_value, tcc_at, tcc_value, vad_at, vad_value, payload)
 * -> (copy: bytes, sent: int)
 *
 * `copy` is the unprotected packet (kept to answer NACKs); `sent` the protected length given
 * to the socket, or -1 when the socket did not take it (full buffer, unreachable peer): a
 * datagram lost like any other, repaired by NACK. An *_at of -1 or None leaves that value out.
 */
static PyObject *copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "copy() takes 14 arguments");
        return NULL;
    }
    if (protect == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_protect() first");
        return NULL;
    }
    long long fd, session, marker_pt, seq, ts, at[3], value[3];
    fd = PyLong_AsLongLong(args[0]);
    session = PyLong_AsLongLong(args[2]);
    marker_pt = PyLong_AsLongLong(args[4]);
    seq = PyLong_AsLongLong(args[5]);
    ts = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    for (int i = 0; i < 3; i++)
        if (optional(args[7 + 2 * i], &at[i]) < 0 || optional(args[8 + 2 * i], &value[i]) < 0)
            return NULL;
    char *addr, *header, *payload;
    Py_ssize_t addr_len, header_len, payload_len;
    if (PyBytes_AsStringAndSize(args[1], &addr, &addr_len) < 0 ||
        PyBytes_AsStringAndSize(args[3], &header, &header_len) < 0 ||
        PyBytes_AsStringAndSize(args[13], &payload, &payload_len) < 0)
        return NULL;
    if (header_len < 12 || header_len + payload_len > BUFFER - TRAILER) {
        PyErr_SetString(PyExc_ValueError, "packet too long or header too short");
        return NULL;
    }
    unsigned char buf[BUFFER];
    memcpy(buf, header, header_len);
    memcpy(buf + header_len, payload, payload_len);
    buf[1] = (unsigned char)marker_pt;
    buf[2] = (unsigned char)(seq >> 8);
    buf[3] = (unsigned char)seq;
    buf[4] = (unsigned char)(ts >> 24);
    buf[5] = (unsigned char)(ts >> 16);
    buf[6] = (unsigned char)(ts >> 8);
    buf[7] = (unsigned char)ts;
    /* abs-send-time: 3 bytes; transport-wide sequence number: 2; audio level: 1. */
    static const int width[3] = {3, 2, 1};
    for (int i = 0; i < 3; i++) {
        if (at[i] < 0 || value[i] < 0)
            continue;
        if (at[i] + width[i] > header_len) {
            PyErr_SetString(PyExc_ValueError, "extension offset outside the header");
            return NULL;
        }
        for (int b = 0; b < width[i]; b++)
            buf[at[i] + b] = (unsigned char)(value[i] >> (8 * (width[i] - 1 - b)));
    }
    int length = (int)(header_len + payload_len);
    PyObject *plain = PyBytes_FromStringAndSize((const char *)buf, length);
    if (plain == NULL)
        return NULL;
    int rc = protect((void *)(uintptr_t)session, buf, &length);
    if (rc != 0) {
        Py_DECREF(plain);
        PyErr_Format(PyExc_RuntimeError, "srtp_protect failed (%d)", rc);
        return NULL;
    }
    ssize_t sent = sendto((int)fd, buf, (size_t)length, MSG_DONTWAIT, (struct sockaddr *)addr,
                          (socklen_t)addr_len);
    return Py_BuildValue("(Nn)", plain, (Py_ssize_t)(sent < 0 ? -1 : length));
}

/* The receive side: aiortc's RtpPacket and HeaderExtensions, made as its parser makes them. */
static PyTypeObject *packet_type = NULL;
static PyTypeObject *extensions_type = NULL;
static PyObject *no_args = NULL;

/* RtpPacket's attributes, in the order its __init__ sets them. */
enum { A_VERSION, A_MARKER, A_PT, A_SEQ, A_TS, A_SSRC, A_CSRC, A_EXT, A_PAYLOAD, A_PADDING, A_N };
static const char *a_names[A_N] = {
    "version", "marker", "payload_type", "sequence_number", "timestamp",
    "ssrc", "csrc", "extensions", "payload", "padding_size",
};
/* The extensions aiortc's map reads, in the order it tries their ids. */
enum { X_MID, X_RRID, X_RID, X_ABS, X_TOFFSET, X_LEVEL, X_TCC, X_N };
static const char *x_names[X_N] = {
    "mid", "repaired_rtp_stream_id", "rtp_stream_id", "abs_send_time",
    "transmission_offset", "audio_level", "transport_sequence_number",
};
static PyObject *a_interned[A_N];
static PyObject *x_interned[X_N];

static PyObject *bind_receive(PyObject *self, PyObject *args) {
    unsigned long long address;
    PyObject *packet, *extensions;
    if (!PyArg_ParseTuple(args, "KO!O!", &address, &PyType_Type, &packet, &PyType_Type,
                          &extensions))
        return NULL;
    for (int i = 0; i < A_N; i++)
        if (a_interned[i] == NULL && (a_interned[i] = PyUnicode_InternFromString(a_names[i])) == NULL)
            return NULL;
    for (int i = 0; i < X_N; i++)
        if (x_interned[i] == NULL && (x_interned[i] = PyUnicode_InternFromString(x_names[i])) == NULL)
            return NULL;
    if (no_args == NULL && (no_args = PyTuple_New(0)) == NULL)
        return NULL;
    Py_INCREF(packet);
    Py_INCREF(extensions);
    Py_XSETREF(packet_type, (PyTypeObject *)packet);
    Py_XSETREF(extensions_type, (PyTypeObject *)extensions);
    unprotect = (protect_fn)(uintptr_t)address;
    Py_RETURN_NONE;
}

/* An extension's value as aiortc's map decodes it; NULL with no error set when its length
 * does not fit its kind (aiortc raises there, and the packet is dropped). */
static PyObject *extension_value(int kind, const unsigned char *v, int n) {
    switch (kind) {
    case X_MID:
        return PyUnicode_DecodeUTF8((const char *)v, n, NULL);
    case X_RRID:
    case X_RID:
        return PyUnicode_DecodeASCII((const char *)v, n, NULL);
    case X_ABS:
        return n == 3 ? PyLong_FromLong(((long)v[0] << 16) | (v[1] << 8) | v[2]) : NULL;
    case X_TOFFSET:
        /* A signed 24-bit value. */
        return n == 3 ? PyLong_FromLong((long)(int32_t)(((uint32_t)v[0] << 24) | (v[1] << 16) |
                                                        (v[2] << 8)) >> 8)
                      : NULL;
    case X_LEVEL:
        return n == 1 ? Py_BuildValue("(Oi)", (v[0] & 0x80) ? Py_True : Py_False, v[0] & 0x7F)
                      : NULL;
    default: /* X_TCC */
        return n == 2 ? PyLong_FromLong((v[0] << 8) | v[1]) : NULL;
    }
}

/* Read the one-byte (0xBEDE) or two-byte (0x1000) extensions into values[]; -1 when malformed. */
static int read_extensions(int profile, const unsigned char *b, int n, const long *ids,
                           PyObject **values) {
    int two = profile == 0x1000;
    if (profile != 0xBEDE && !two)
        return 0;
    int q = 0;
    while (q < n) {
        if (b[q] == 0) { /* padding */
            q++;
            continue;
        }
        int id, length;
        if (two) {
            if (n < q + 2)
                return -1;
            id = b[q];
            length = b[q + 1];
            q += 2;
        } else {
            id = b[q] >> 4;
            length = (b[q] & 0x0F) + 1;
            q += 1;
        }
        if (n < q + length)
            return -1;
        for (int k = 0; k < X_N; k++) {
            if (ids[k] != id)
                continue;
            PyObject *value = extension_value(k, b + q, length);
            if (value == NULL) {
                PyErr_Clear();
                return -1;
            }
            Py_XSETREF(values[k], value);
            break;
        }
        q += length;
    }
    return 0;
}

static int set_attributes(PyObject *obj, PyObject **names, PyObject **values, int n) {
    for (int i = 0; i < n; i++)
        if (PyObject_SetAttr(obj, names[i], values[i] ? values[i] : Py_None) < 0)
            return -1;
    return 0;
}

/* The RtpPacket aiortc's RtpPacket.parse makes of b, or None where it would raise. */
static PyObject *parsed(const unsigned char *b, int n, const long *ids) {
    if (n < 12 || b[0] >> 6 != 2)
        Py_RETURN_NONE;
    int padding = (b[0] >> 5) & 1, extension = (b[0] >> 4) & 1, cc = b[0] & 0x0F;
    int pos = 12 + 4 * cc;
    if (n < pos)
        Py_RETURN_NONE;
    PyObject *x[X_N] = {NULL};
    PyObject *a[A_N] = {NULL};
    PyObject *result = NULL, *packet = NULL, *ext = NULL;
    if (extension) {
        if (n < pos + 4)
            goto none;
        int profile = (b[pos] << 8) | b[pos + 1];
        int length = ((b[pos + 2] << 8) | b[pos + 3]) * 4;
        pos += 4;
        if (n < pos + length || read_extensions(profile, b + pos, length, ids, x) < 0)
            goto none;
        pos += length;
    }
    int end = n, pad = 0;
    if (padding) {
        pad = b[n - 1];
        if (pad == 0 || pad > n - pos)
            goto none;
        end = n - pad;
    }
    if ((ext = PyBaseObject_Type.tp_new(extensions_type, no_args, NULL)) == NULL ||
        set_attributes(ext, x_interned, x, X_N) < 0)
        goto done;
    if ((a[A_CSRC] = PyList_New(cc)) == NULL)
        goto done;
    for (int i = 0; i < cc; i++) {
        const unsigned char *c = b + 12 + 4 * i;
        PyObject *v = PyLong_FromUnsignedLong(((unsigned long)c[0] << 24) | ((unsigned long)c[1] << 16) | ((unsigned long)c[2] << 8) | c[3]);
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(a[A_CSRC], i, v);
    }
    a[A_VERSION] = PyLong_FromLong(2);
    a[A_MARKER] = PyLong_FromLong(b[1] >> 7);
    a[A_PT] = PyLong_FromLong(b[1] & 0x7F);
    a[A_SEQ] = PyLong_FromLong((b[2] << 8) | b[3]);
    a[A_TS] = PyLong_FromUnsignedLong(((unsigned long)b[4] << 24) | ((unsigned long)b[5] << 16) | ((unsigned long)b[6] << 8) | b[7]);
    a[A_SSRC] = PyLong_FromUnsignedLong(((unsigned long)b[8] << 24) | ((unsigned long)b[9] << 16) | ((unsigned long)b[10] << 8) | b[11]);
    a[A_EXT] = ext;
    ext = NULL;
    a[A_PAYLOAD] = PyBytes_FromStringAndSize((const char *)b + pos, end - pos);
    a[A_PADDING] = PyLong_FromLong(pad);
    for (int i = 0; i < A_N; i++)
        if (a[i] == NULL)
            goto done;
    if ((packet = PyBaseObject_Type.tp_new(packet_type, no_args, NULL)) == NULL ||
        set_attributes(packet, a_interned, a, A_N) < 0)
        goto done;
    result = packet;
    packet = NULL;
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < X_N; i++)
        Py_XDECREF(x[i]);
    for (int i = 0; i < A_N; i++)
        Py_XDECREF(a[i]);
    Py_XDECREF(ext);
    Py_XDECREF(packet);
    return result;
}

/* The ids an aiortc HeaderExtensionsMap gave each extension (its HeaderExtensions of ids). */
static int read_ids(PyObject *map_ids, long *ids) {
    for (int k = 0; k < X_N; k++) {
        PyObject *v = PyObject_GetAttr(map_ids, x_interned[k]);
        if (v == NULL)
            return -1;
        ids[k] = v == Py_None ? -1 : PyLong_AsLong(v);
        Py_DECREF(v);
        if (ids[k] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* The arguments parse and receive share: the packet's bytes and the map's ids; -1 on error. */
static int packet_args(Py_ssize_t nargs, Py_ssize_t want, const char *name, PyObject *data_obj,
                       PyObject *ids_obj, char **data, Py_ssize_t *n, long *ids) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments", name, want);
        return -1;
    }
    if (packet_type == NULL || unprotect == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_receive() first");
        return -1;
    }
    if (PyBytes_AsStringAndSize(data_obj, data, n) < 0 || read_ids(ids_obj, ids) < 0)
        return -1;
    return 0;
}

/* parse(data, ids) -> RtpPacket | None: RtpPacket.parse(data, map), None where it raises. */
static PyObject *parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *data;
    Py_ssize_t n;
    long ids[X_N];
    if (packet_args(nargs, 2, "parse", nargs > 0 ? args[0] : NULL, nargs > 1 ? args[1] : NULL,
                    &data, &n, ids) < 0)
        return NULL;
    if (n > BUFFER)
        Py_RETURN_NONE;
    return parsed((const unsigned char *)data, (int)n, ids);
}

/* receive(session, data, ids) -> RtpPacket | None
 *
 * A publisher's SRTP packet verified with its session (libsrtp's srtp_unprotect) and parsed
 * as `parse` does; None when it is not authentic, a replay, too long or not RTP: dropped, as
 * aiortc drops it.
 */
static PyObject *receive(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *data;
    Py_ssize_t n;
    long ids[X_N];
    if (packet_args(nargs, 3, "receive", nargs > 1 ? args[1] : NULL, nargs > 2 ? args[2] : NULL,
                    &data, &n, ids) < 0)
        return NULL;
    long long session = PyLong_AsLongLong(args[0]);
    if (PyErr_Occurred())
        return NULL;
    if (n > RECEIVED)
        Py_RETURN_NONE;
    unsigned char buf[BUFFER];
    memcpy(buf, data, (size_t)n);
    int length = (int)n;
    if (unprotect((void *)(uintptr_t)session, buf, &length) != 0)
        Py_RETURN_NONE;
    return parsed(buf, length, ids);
}

/* stamp(fd): have the kernel stamp each datagram's arrival on this socket (SO_TIMESTAMPNS). */
static PyObject *stamp(PyObject *self, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    int on = 1;
    if (setsockopt((int)fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* drain(fd, most) -> [(data, address, waited), ...]
 *
 * The datagrams already waiting on a socket, up to `most`, read with one recvmmsg; `address`
 * as socket.recvfrom gives it, `waited` the seconds each spent in the socket's queue (from the
 * kernel's arrival stamp, SO_TIMESTAMPNS; -1.0 without one). Empty when none waits. An error
 * other than "nothing waits" is raised as OSError, as recvfrom raises it.
 */
#define MOST 64
static PyObject *drain(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "drain() takes 2 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    long most = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (most < 1 || most > MOST) {
        PyErr_SetString(PyExc_ValueError, "most must be 1 to 64");
        return NULL;
    }
    /* 64 KiB each, as asyncio reads: 4 MiB for a burst, allocated once. */
    static unsigned char (*bufs)[65536] = NULL;
    if (bufs == NULL && (bufs = PyMem_RawMalloc((size_t)MOST * 65536)) == NULL)
        return PyErr_NoMemory();
    struct mmsghdr msgs[MOST];
    struct iovec iov[MOST];
    struct sockaddr_storage from[MOST];
    char control[MOST][CMSG_SPACE(sizeof(struct timespec))];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < most; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = 65536;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        msgs[i].msg_hdr.msg_control = control[i];
        msgs[i].msg_hdr.msg_controllen = sizeof control[i];
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = recvmmsg((int)fd, msgs, (unsigned int)most, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    PyObject *out = PyList_New(got);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
        double waited = -1.0;
        struct msghdr *h = &msgs[i].msg_hdr;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec at;
                memcpy(&at, CMSG_DATA(c), sizeof at);
                waited = (double)(now.tv_sec - at.tv_sec) + (now.tv_nsec - at.tv_nsec) / 1e9;
            }
        }
        char host[INET6_ADDRSTRLEN];
        PyObject *address;
        if (from[i].ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&from[i];
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            address = Py_BuildValue("(siII)", host, ntohs(a->sin6_port),
                                    ntohl(a->sin6_flowinfo), a->sin6_scope_id);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&from[i];
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            address = Py_BuildValue("(si)", host, ntohs(a->sin_port));
        }
        PyObject *item = address == NULL ? NULL
                                         : Py_BuildValue("(y#Nd)", (const char *)bufs[i],
                                                         (Py_ssize_t)msgs[i].msg_len, address,
                                                         waited);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"bind_protect", bind_protect, METH_O, "Use the srtp_protect at this address."},
    {"bind_receive", bind_receive, METH_VARARGS,
     "Use the srtp_unprotect at this address, and make these RtpPacket and HeaderExtensions."},
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "Parse an RTP packet as aiortc does; None where aiortc raises."},
    {"stamp", stamp, METH_O, "Have the kernel stamp each datagram's arrival on this socket."},
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL,
     "Read the datagrams waiting on a socket in one call, with how long each waited."},
    {"receive", (PyCFunction)(void (*)(void))receive, METH_FASTCALL,
     "Verify and parse a publisher's SRTP packet; None when it is dropped."},
    {"sockaddr", sockaddr, METH_VARARGS, "Return a numeric address and port as a sockaddr."},
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL,
     "Patch, protect and send one subscriber's copy of an RTP packet."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastcopy", "Per-copy forwarding in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__fastcopy(void) { return PyModule_Create(&module); }
