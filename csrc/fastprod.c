/* fastprod.c -- pylog._fastprod: Producer.produce() and the queue drain in C.
 *
 * Four types, used by pylog/producer.py and pylog/sender.py when this module
 * imports and PYLOG_NO_FASTPROD is unset when a Producer is created:
 *
 * Deque        a topic's queued records (what collections.deque held): bare
 *              bytes values, or the tuples Producer._produce_slow builds.
 *              append/popleft/len as a deque, so Python code that knows only
 *              a deque (the delegated produce(), metrics, a test that swaps
 *              in its own deque) keeps working; popmany(n) takes the first n
 *              records as a list; take_bare(n, ...) takes them, when all are
 *              bare values, already cut into batches (one Deque each).
 * TopicQueue   sender.TopicQueue with C fields (the same attribute names), so
 *              Lane.produce reads and updates them without attribute lookups.
 * Lane         one per Producer: its bound method `produce` is installed as
 *              the producer's instance attribute `produce`.
 * Encoder      one per Sender: writes a take_bare batch into a bytearray,
 *              reusing one buffer from batch to batch.
 *
 * Lane.produce handles, entirely in C, the calls that would take one of the
 * two Python paths without raising and without any of the once-per-batch
 * work (arming an empty queue, the queue-full recount, waking the sender):
 *   - the short path of Producer.produce: bytes value, no key, partition -1,
 *     no callback, no headers, a false timestamp: the value is queued bare;
 *   - the common shapes of _produce_slow: bytes or None value, bytes or None
 *     key, partition -1 or an int in range, a function/method callback or
 *     none, an int timestamp >= 0, no headers: the same 8-tuple is queued.
 * Every test is made before anything changes.  With several topic queues,
 * _check_room's recount of queue.buffering.max.messages (due on every call
 * then) is done here too (recount_room).  Any other call -- an unknown
 * or repeated keyword, another type, a record over message.max.bytes, a full
 * queue, an empty queue, a queue due to be kicked, a producer that is closed,
 * fatal, transactional outside a transaction or has a default callback
 * (Lane.fast false) -- is passed, with its arguments untouched, to the
 * Python Producer.produce, which then does what it always did: its checks,
 * its exceptions and their messages are the only ones there are.  Only the
 * GIL protects these objects: nothing in the handled paths releases it or
 * runs Python code.
 *
 * take_bare() cuts exactly as Sender._split_bare (a record counts as
 * len(value) + 24 bytes; at most batch.num.messages records and, past the
 * first record, at most batch.size such bytes).  Encoder.encode writes a
 * batch as pl_builder_append + pl_builder_finish in batch.c would: records
 * with timestampDelta 0, offsetDelta i, a null key and no headers, then the
 * 61-byte v2 header with baseTimestamp = maxTimestamp = ts0.  Producer id,
 * epoch, base sequence, attributes and the CRC are written after (through
 * _bridge.write_header, batch.c's pl_batch_write_header) when the batch's
 * sequence number is known.  The encoded size of every record and batch is
 * computed, and checked against batch.c's int32 limits, before anything is
 * allocated or taken; a take that batch.c would refuse returns None so that
 * the Python path raises its usual error.  The batch goes to the log as a
 * bytearray: log.append stamps its offset in place, with no further copy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE     61      /* pylog.h PL_HEADER_SIZE */
#define LOG_OVERHEAD    12      /* PL_LOG_OVERHEAD */
#define MAGIC           2       /* PL_MAGIC */
#define SPLIT_OVERHEAD  24      /* Sender._split_bare: len(value) + 24 per record */
#define MAX_INT32       2147483647LL

#include "wire.h"          /* big-endian fields and zigzag varints, as batch.c */

/* Body of a bare record (batch.c record_body_size with key_len -1, no
 * headers, timestampDelta 0): attributes, tsDelta, offsetDelta, keyLength,
 * valueLength, value, headerCount. */
static inline int64_t bare_body_size(int64_t offset_delta, int64_t value_len)
{
    return 1 + 1 + (int64_t)varlong_size(offset_delta) + 1 +
           (int64_t)varlong_size(value_len) + value_len + 1;
}

/* ======================================================================
 * Deque
 * ====================================================================== */
typedef struct {
    PyObject_HEAD
    PyObject **items;           /* items[head .. head+len) are queued (owned) */
    Py_ssize_t head, len, cap;
    size_t state;               /* bumped by every change: see take_bare */
} DequeObject;

static PyTypeObject DequeType;

static int deque_push(DequeObject *d, PyObject *x)
{
    if (d->head + d->len == d->cap) {
        if (d->head > 0 && d->head >= d->len) {         /* at least half free: compact */
            memmove(d->items, d->items + d->head, (size_t)d->len * sizeof(PyObject *));
            d->head = 0;
        }
        else {
            if (d->cap > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(PyObject *)) {
                PyErr_NoMemory();
                return -1;
            }
            Py_ssize_t ncap = d->cap ? d->cap * 2 : 64;
            PyObject **ni = PyMem_Realloc(d->items, (size_t)ncap * sizeof(PyObject *));
            if (ni == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            d->items = ni;
            d->cap = ncap;
        }
    }
    Py_INCREF(x);
    d->items[d->head + d->len] = x;
    d->len++;
    d->state++;
    return 0;
}

/* Forget the first n records (their references have been moved or are
 * released by the caller), and give back a large array once it is empty. */
static void deque_drop_front(DequeObject *d, Py_ssize_t n)
{
    d->head += n;
    d->len -= n;
    d->state++;
    if (d->len == 0) {
        d->head = 0;
        if (d->cap > 4096 && d->cap > 4 * n) {
            Py_ssize_t ncap = n > 64 ? n : 64;
            PyObject **ni = PyMem_Realloc(d->items, (size_t)ncap * sizeof(PyObject *));
            if (ni != NULL) {               /* else keep the larger array */
                d->items = ni;
                d->cap = ncap;
            }
        }
    }
}

static PyObject *deque_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((args != NULL && PyTuple_GET_SIZE(args) != 0) ||
        (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Deque() takes no arguments");
        return NULL;
    }
    DequeObject *d = PyObject_GC_New(DequeObject, type);
    if (d == NULL)
        return NULL;
    d->items = NULL;
    d->head = d->len = d->cap = 0;
    d->state = 0;
    PyObject_GC_Track(d);
    return (PyObject *)d;
}

static int deque_clear(DequeObject *d)
{
    /* Detach first: a finalizer run by a DECREF below may look at d. */
    PyObject **items = d->items;
    Py_ssize_t head = d->head, len = d->len;
    d->items = NULL;
    d->head = d->len = d->cap = 0;
    d->state++;
    for (Py_ssize_t i = 0; i < len; i++)
        Py_DECREF(items[head + i]);
    PyMem_Free(items);
    return 0;
}

static int deque_traverse(DequeObject *d, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < d->len; i++)
        Py_VISIT(d->items[d->head + i]);
    return 0;
}

static void deque_dealloc(DequeObject *d)
{
    PyObject_GC_UnTrack(d);
    Py_TRASHCAN_BEGIN(d, deque_dealloc)
    deque_clear(d);
    Py_TYPE(d)->tp_free((PyObject *)d);
    Py_TRASHCAN_END
}

static Py_ssize_t deque_length(DequeObject *d) { return d->len; }

static PyObject *deque_append(DequeObject *d, PyObject *x)
{
    if (deque_push(d, x) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *deque_popleft(DequeObject *d, PyObject *unused)
{
    if (d->len == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty deque");
        return NULL;
    }
    PyObject *x = d->items[d->head];        /* the reference moves to the caller */
    deque_drop_front(d, 1);
    return x;
}

static PyObject *deque_method_clear(DequeObject *d, PyObject *unused)
{
    deque_clear(d);
    Py_RETURN_NONE;
}

static int take_count(DequeObject *d, PyObject *arg, Py_ssize_t *n)
{
    *n = PyLong_AsSsize_t(arg);
    if (*n == -1 && PyErr_Occurred())
        return -1;
    if (*n < 0 || *n > d->len) {
        PyErr_Format(PyExc_ValueError, "cannot take %zd records from a queue of %zd", *n, d->len);
        return -1;
    }
    return 0;
}

static PyObject *deque_popmany(DequeObject *d, PyObject *arg)
{
    Py_ssize_t n;
    if (take_count(d, arg, &n) < 0)
        return NULL;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    if (n > d->len) {                       /* a finalizer run by a GC in PyList_New took some */
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "queue changed while being taken");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)      /* the references move to the list */
        PyList_SET_ITEM(out, i, d->items[d->head + i]);
    deque_drop_front(d, n);
    return out;
}

/* The encoded size of a batch of the bare values v[0..count), header
 * included, or -1 if batch.c's pl_builder_append would refuse it (it checks
 * each record against the int32 limits as it goes: value, body, batch). */
static int64_t bare_batch_size(PyObject *const *v, Py_ssize_t count)
{
    int64_t total = HEADER_SIZE;
    if (count > MAX_INT32)
        return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t vlen = PyBytes_GET_SIZE(v[i]);
        int64_t body = bare_body_size(i, vlen);
        if (vlen > MAX_INT32 || body > MAX_INT32 || total + body + 5 > MAX_INT32)
            return -1;
        total += (int64_t)varlong_size(body) + body;
    }
    return total;
}

/* take_bare(n, batch_msgs, batch_bytes) -> [(Deque, count)] or None */
static PyObject *deque_take_bare(DequeObject *d, PyObject *args)
{
    Py_ssize_t n;
    long long batch_msgs, batch_bytes;
    PyObject *n_obj;
    if (!PyArg_ParseTuple(args, "OLL:take_bare", &n_obj, &batch_msgs, &batch_bytes))
        return NULL;
    if (take_count(d, n_obj, &n) < 0)
        return NULL;
    if (batch_msgs < 1) {
        PyErr_SetString(PyExc_ValueError, "batch_msgs must be >= 1");
        return NULL;
    }
    if (n == 0)
        return PyList_New(0);
    PyObject **it = d->items + d->head;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_CheckExact(it[i]))
            Py_RETURN_NONE;                 /* not all bare: the caller's Python path */
    }

    /* Plan the cuts (at most n batches) and check every batch against batch.c. */
    Py_ssize_t *ends = PyMem_Malloc((size_t)n * sizeof(Py_ssize_t));
    if (ends == NULL)
        return PyErr_NoMemory();
    Py_ssize_t nb = 0, start = 0;
    while (start < n) {
        /* Sender._split_bare: the first record always, then each next one
         * while the running len+24 sum stays within batch_bytes. */
        int64_t sum = (int64_t)PyBytes_GET_SIZE(it[start]) + SPLIT_OVERHEAD;
        Py_ssize_t stop = start + 1;
        while (stop < n && stop - start < batch_msgs) {
            int64_t sz = (int64_t)PyBytes_GET_SIZE(it[stop]) + SPLIT_OVERHEAD;
            if (sum + sz > batch_bytes)
                break;
            sum += sz;
            stop++;
        }
        if (bare_batch_size(it + start, stop - start) < 0) {
            PyMem_Free(ends);
            Py_RETURN_NONE;                 /* batch.c would refuse it: the Python path says so */
        }
        ends[nb++] = stop;
        start = stop;
    }

    /* One Deque per batch, allocated before anything is taken: on failure
     * the queue is left as it was.  These allocations may run a GC, and a
     * finalizer may run Python code: the plan stands only if the queue has
     * not changed meanwhile. */
    size_t state = d->state;
    PyObject *out = PyList_New(nb);
    if (out == NULL)
        goto fail;
    for (Py_ssize_t b = 0; b < nb; b++) {
        Py_ssize_t count = ends[b] - (b ? ends[b - 1] : 0);
        DequeObject *part = (DequeObject *)deque_new(&DequeType, NULL, NULL);
        if (part == NULL)
            goto fail;
        PyObject *cnt = PyLong_FromSsize_t(count);
        PyObject *pair = cnt ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_DECREF(part);
            Py_XDECREF(cnt);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, (PyObject *)part);
        PyTuple_SET_ITEM(pair, 1, cnt);
        PyList_SET_ITEM(out, b, pair);
        part->items = PyMem_Malloc((size_t)count * sizeof(PyObject *));
        if (part->items == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        part->cap = count;
    }
    if (d->state != state) {
        PyErr_SetString(PyExc_RuntimeError, "queue changed while being taken");
        goto fail;
    }
    it = d->items + d->head;
    /* Move the references. */
    for (Py_ssize_t b = 0; b < nb; b++) {
        DequeObject *part = (DequeObject *)PyTuple_GET_ITEM(PyList_GET_ITEM(out, b), 0);
        Py_ssize_t first = b ? ends[b - 1] : 0;
        memcpy(part->items, it + first, (size_t)(ends[b] - first) * sizeof(PyObject *));
        part->len = ends[b] - first;
    }
    PyMem_Free(ends);
    deque_drop_front(d, n);
    return out;

fail:
    PyMem_Free(ends);
    Py_XDECREF(out);                        /* the parts hold no records yet */
    return NULL;
}

static PyMethodDef deque_methods[] = {
    {"append", (PyCFunction)deque_append, METH_O, "Queue one record."},
    {"popleft", (PyCFunction)deque_popleft, METH_NOARGS, "Take the oldest record."},
    {"clear", (PyCFunction)deque_method_clear, METH_NOARGS, "Drop every record."},
    {"popmany", (PyCFunction)deque_popmany, METH_O,
     "popmany(n) -> list: take the n oldest records."},
    {"take_bare", (PyCFunction)deque_take_bare, METH_VARARGS,
     "take_bare(n, batch_msgs, batch_bytes) -> [(Deque, count)], or None\n\n"
     "Take the n oldest records, if all are bare bytes values, cut into batches as\n"
     "Sender._split_bare cuts them: one Deque of values per batch, for\n"
     "Encoder.encode.  None, and nothing taken, if any record is not a bare value\n"
     "or batch.c would refuse one of the batches."},
    {NULL}
};

static PySequenceMethods deque_as_sequence = {
    .sq_length = (lenfunc)deque_length,
};

static PyTypeObject DequeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pylog._fastprod.Deque",
    .tp_basicsize = sizeof(DequeObject),
    .tp_dealloc = (destructor)deque_dealloc,
    .tp_as_sequence = &deque_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A topic's queued records (the deque subset pylog uses).",
    .tp_traverse = (traverseproc)deque_traverse,
    .tp_clear = (inquiry)deque_clear,
    .tp_methods = deque_methods,
    .tp_new = deque_new,
};

/* ======================================================================
 * Encoder
 * ====================================================================== */
typedef struct {
    PyObject_HEAD
    PyObject *spare;            /* the last batch's bytearray, reused once nobody else holds it */
} EncoderObject;

static PyObject *encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((args != NULL && PyTuple_GET_SIZE(args) != 0) ||
        (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Encoder() takes no arguments");
        return NULL;
    }
    EncoderObject *e = PyObject_New(EncoderObject, type);
    if (e != NULL)
        e->spare = NULL;
    return (PyObject *)e;
}

static void encoder_dealloc(EncoderObject *e)
{
    Py_CLEAR(e->spare);
    PyObject_Free(e);
}

#define SPARE_MAX (16 << 20)       /* a larger batch gets a buffer of its own */

/* A bytearray of exactly size bytes (contents undefined): the spare one
 * when only this encoder references it (no view, no caller, no log buffer
 * list: a reference count of 1 proves it) and it is not much larger than
 * needed, else a new one, kept as the spare unless the spare is reusable.
 * Reusing one buffer saves touching fresh memory for every batch (page
 * faults cost about 2 us per 4 KiB page on the benchmark VM: more than
 * encoding the records). */
static PyObject *encoder_buffer(EncoderObject *e, Py_ssize_t size)
{
    PyObject *sp = e->spare;
    if (sp != NULL && Py_REFCNT(sp) == 1 && size <= SPARE_MAX &&
        size >= ((PyByteArrayObject *)sp)->ob_alloc / 2) {
        if (PyByteArray_Resize(sp, size) < 0)
            return NULL;
        Py_INCREF(sp);
        return sp;
    }
    PyObject *buf = PyByteArray_FromStringAndSize(NULL, size);
    if (buf == NULL)
        return NULL;
    if (size <= SPARE_MAX && (sp == NULL || Py_REFCNT(sp) != 1)) {
        Py_INCREF(buf);
        e->spare = buf;
        Py_XDECREF(sp);                 /* bytearray: runs no Python code */
    }
    return buf;
}

/* encode(part, ts0) -> bytearray */
static PyObject *encoder_encode(EncoderObject *e, PyObject *args)
{
    PyObject *part_obj;
    long long ts0;
    if (!PyArg_ParseTuple(args, "O!L:encode", &DequeType, &part_obj, &ts0))
        return NULL;
    DequeObject *part = (DequeObject *)part_obj;
    Py_ssize_t count = part->len;
    PyObject *const *v = part->items + part->head;
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "empty batch");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(v[i])) {
            PyErr_Format(PyExc_TypeError, "a bare batch holds bytes, not %.200s",
                         Py_TYPE(v[i])->tp_name);
            return NULL;
        }
    }
    int64_t size = bare_batch_size(v, count);
    if (size < 0) {                     /* take_bare checked: only if changed since */
        PyErr_SetString(PyExc_OverflowError, "batch too large");
        return NULL;
    }
    PyObject *ba = encoder_buffer(e, (Py_ssize_t)size);
    if (ba == NULL)
        return NULL;
    uint8_t *buf = (uint8_t *)PyByteArray_AS_STRING(ba);
    uint8_t *p = buf + HEADER_SIZE;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t vlen = PyBytes_GET_SIZE(v[i]);
        p = put_varlong(p, bare_body_size(i, vlen));
        *p++ = 0;                       /* record attributes */
        *p++ = 0;                       /* timestampDelta 0 */
        p = put_varlong(p, i);          /* offsetDelta */
        *p++ = 1;                       /* keyLength -1 (zigzag) */
        p = put_varlong(p, vlen);
        if (vlen > 0) {
            memcpy(p, PyBytes_AS_STRING(v[i]), (size_t)vlen);
            p += vlen;
        }
        *p++ = 0;                       /* headerCount 0 */
    }
    if (p != buf + size) {              /* the sizing and the writing disagree */
        Py_DECREF(ba);
        PyErr_SetString(PyExc_SystemError, "pylog._fastprod: batch size mismatch");
        return NULL;
    }
    put64(buf, 0);                                  /* baseOffset: the log assigns it */
    put32(buf + 8, (uint32_t)(size - LOG_OVERHEAD));
    put32(buf + 12, (uint32_t)-1);                  /* partitionLeaderEpoch */
    buf[16] = MAGIC;
    put32(buf + 17, 0);                             /* crc: written with the sequence */
    put16(buf + 21, 0);                             /* attributes: idem */
    put32(buf + 23, (uint32_t)(count - 1));         /* lastOffsetDelta */
    put64(buf + 27, (uint64_t)ts0);                 /* baseTimestamp */
    put64(buf + 35, (uint64_t)ts0);                 /* maxTimestamp */
    put64(buf + 43, (uint64_t)-1);                  /* producerId: idem */
    put16(buf + 51, (uint16_t)-1);                  /* producerEpoch: idem */
    put32(buf + 53, (uint32_t)-1);                  /* baseSequence: idem */
    put32(buf + 57, (uint32_t)count);
    return ba;
}

static PyMethodDef encoder_methods[] = {
    {"encode", (PyCFunction)encoder_encode, METH_VARARGS,
     "encode(part, ts0) -> bytearray\n\n"
     "The batch of take_bare's Deque part (bare values, timestamp ts0), as\n"
     "pl_builder_append + pl_builder_finish write it, less the producer id, epoch,\n"
     "base sequence, attributes and CRC (write them with _bridge.write_header).\n"
     "The bytearray is this encoder's spare when nothing else references it."},
    {NULL}
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pylog._fastprod.Encoder",
    .tp_basicsize = sizeof(EncoderObject),
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(): writes bare batches, reusing one buffer (see encode).",
    .tp_methods = encoder_methods,
    .tp_new = encoder_new,
};

/* ======================================================================
 * TopicQueue
 * ====================================================================== */
typedef struct {
    PyObject_HEAD
    PyObject *topic;
    PyObject *dq;               /* a Deque unless Python code put another deque here */
    long long nparts;
    long long first_ts;
    double deadline;
    long long bytes;
    long long sticky;
    long long room;
    char kicked;
} TopicQueueObject;

static PyTypeObject TopicQueueType;

static PyObject *tq_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"topic", "nparts", "sticky", NULL};
    PyObject *topic;
    long long nparts, sticky = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OL|L:TopicQueue", kwlist, &topic, &nparts, &sticky))
        return NULL;
    PyObject *dq = deque_new(&DequeType, NULL, NULL);
    if (dq == NULL)
        return NULL;
    TopicQueueObject *q = PyObject_GC_New(TopicQueueObject, type);
    if (q == NULL) {
        Py_DECREF(dq);
        return NULL;
    }
    Py_INCREF(topic);
    q->topic = topic;
    q->dq = dq;
    q->nparts = nparts;
    q->first_ts = 0;
    q->deadline = 0.0;
    q->bytes = 0;
    q->sticky = sticky;
    q->room = 0;
    q->kicked = 0;
    PyObject_GC_Track(q);
    return (PyObject *)q;
}

static int tq_traverse(TopicQueueObject *q, visitproc visit, void *arg)
{
    Py_VISIT(q->topic);
    Py_VISIT(q->dq);
    return 0;
}

static int tq_clear(TopicQueueObject *q)
{
    Py_CLEAR(q->topic);
    Py_CLEAR(q->dq);
    return 0;
}

static void tq_dealloc(TopicQueueObject *q)
{
    PyObject_GC_UnTrack(q);
    tq_clear(q);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static PyMemberDef tq_members[] = {
    {"topic", T_OBJECT, offsetof(TopicQueueObject, topic), READONLY, NULL},
    {"dq", T_OBJECT_EX, offsetof(TopicQueueObject, dq), 0, "the queued records"},
    {"nparts", T_LONGLONG, offsetof(TopicQueueObject, nparts), 0, NULL},
    {"first_ts", T_LONGLONG, offsetof(TopicQueueObject, first_ts), 0, NULL},
    {"deadline", T_DOUBLE, offsetof(TopicQueueObject, deadline), 0, NULL},
    {"bytes", T_LONGLONG, offsetof(TopicQueueObject, bytes), 0, NULL},
    {"sticky", T_LONGLONG, offsetof(TopicQueueObject, sticky), 0, NULL},
    {"kicked", T_BOOL, offsetof(TopicQueueObject, kicked), 0, NULL},
    {"room", T_LONGLONG, offsetof(TopicQueueObject, room), 0, NULL},
    {NULL}
};

static PyTypeObject TopicQueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pylog._fastprod.TopicQueue",
    .tp_basicsize = sizeof(TopicQueueObject),
    .tp_dealloc = (destructor)tq_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "TopicQueue(topic, nparts, sticky=0): sender.TopicQueue with C fields.",
    .tp_traverse = (traverseproc)tq_traverse,
    .tp_clear = (inquiry)tq_clear,
    .tp_members = tq_members,
    .tp_new = tq_new,
};

/* ======================================================================
 * Lane
 * ====================================================================== */
enum { A_TOPIC, A_VALUE, A_KEY, A_PARTITION, A_ON_DELIVERY, A_TIMESTAMP, A_HEADERS,
       A_CALLBACK, A_COUNT };
static const char *const ARG_NAMES[A_COUNT] = {
    "topic", "value", "key", "partition", "on_delivery", "timestamp", "headers", "callback",
};
static PyObject *arg_names[A_COUNT];        /* interned */
static PyObject *empty_bytes, *int_zero, *int_minus_one;
static PyObject *str_inflight, *str_reports;  /* Sender attributes, interned */
static PyObject *collections_deque;         /* the type of Sender.reports */

typedef struct {
    PyObject_HEAD
    PyObject *queues;           /* the producer's _queues: topic -> TopicQueue */
    PyObject *slow;             /* the Python Producer.produce, bound */
    PyObject *sender;           /* Producer._sender (inflight, reports), or None */
    long long max_queue_msgs;   /* Producer._max_queue_msgs */
    long long max_value;        /* Producer._max_value */
    long long max_msg;          /* _max_msg */
    long long max_queue_bytes;  /* _max_queue_bytes */
    long long batch_msgs;       /* _batch_msgs */
    long long batch_bytes;      /* _batch_bytes */
    char fast;                  /* Producer._fast */
} LaneObject;

static PyObject *lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"queues", "slow", "max_value", "max_msg", "max_queue_bytes",
                             "batch_msgs", "batch_bytes", "sender", "max_queue_msgs", NULL};
    PyObject *queues, *slow, *sender = Py_None;
    long long max_value, max_msg, max_queue_bytes, batch_msgs, batch_bytes, max_queue_msgs = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OLLLLL|OL:Lane", kwlist, &PyDict_Type, &queues,
                                     &slow, &max_value, &max_msg, &max_queue_bytes, &batch_msgs,
                                     &batch_bytes, &sender, &max_queue_msgs))
        return NULL;
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        return NULL;
    }
    LaneObject *l = PyObject_GC_New(LaneObject, type);
    if (l == NULL)
        return NULL;
    Py_INCREF(queues);
    Py_INCREF(slow);
    Py_INCREF(sender);
    l->queues = queues;
    l->slow = slow;
    l->sender = sender;
    l->max_queue_msgs = max_queue_msgs;
    l->max_value = max_value;
    l->max_msg = max_msg;
    l->max_queue_bytes = max_queue_bytes;
    l->batch_msgs = batch_msgs;
    l->batch_bytes = batch_bytes;
    l->fast = 0;
    PyObject_GC_Track(l);
    return (PyObject *)l;
}

static int lane_traverse(LaneObject *l, visitproc visit, void *arg)
{
    Py_VISIT(l->queues);
    Py_VISIT(l->slow);
    Py_VISIT(l->sender);
    return 0;
}

static int lane_clear(LaneObject *l)
{
    l->fast = 0;
    Py_CLEAR(l->queues);
    Py_CLEAR(l->slow);
    Py_CLEAR(l->sender);
    return 0;
}

static void lane_dealloc(LaneObject *l)
{
    PyObject_GC_UnTrack(l);
    lane_clear(l);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

/* An exact int; *out its value.  0 if another type or out of range. */
static inline int exact_int(PyObject *o, long long *out)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* Producer._check_room for a queue that reached its room while the producer
 * has several topic queues (then room is one record at a time, so this runs
 * on every call): len(producer) -- every queue, the records being written
 * (Sender.inflight), the reports not yet served (len(Sender.reports)) -- and
 * the new room, stored as _check_room stores it.  Returns 1 if the record
 * may be queued, 0 to hand the call to Python: the queue is full (Python
 * raises the BufferError), there is one queue only (a recount once per
 * batch: Python's), or anything is not as expected.  Caller has checked
 * tq.bytes against queue.buffering.max.kbytes and that n > 0. */
static int recount_room(LaneObject *self, TopicQueueObject *tq, Py_ssize_t n)
{
    if (self->sender == NULL || self->sender == Py_None || PyDict_GET_SIZE(self->queues) < 2)
        return 0;
    long long total = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(self->queues, &pos, &k, &v)) {
        PyObject *q = Py_IS_TYPE(v, &TopicQueueType) ? ((TopicQueueObject *)v)->dq : NULL;
        if (q == NULL || !Py_IS_TYPE(q, &DequeType))
            return 0;
        total += ((DequeObject *)q)->len;
    }
    /* Plain instance attributes: no Python code runs, nothing above changes. */
    PyObject *inflight = PyObject_GetAttr(self->sender, str_inflight);
    long long infl = -1;
    if (inflight == NULL || !exact_int(inflight, &infl) || infl < 0) {
        Py_XDECREF(inflight);
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(inflight);
    PyObject *reports = PyObject_GetAttr(self->sender, str_reports);
    if (reports == NULL || !Py_IS_TYPE(reports, (PyTypeObject *)collections_deque)) {
        Py_XDECREF(reports);
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t nrep = PyObject_Size(reports);       /* deque: C, no Python code */
    Py_DECREF(reports);
    if (nrep < 0) {
        PyErr_Clear();
        return 0;
    }
    long long room = self->max_queue_msgs - (total + infl + nrep - n);
    if (n >= room)
        return 0;                                   /* full: BufferError, from Python */
    tq->room = room < n + 1 ? room : n + 1;
    return 1;
}

/* A callable that is always true: Python's `on_delivery or callback` and
 * `cb or default` pick it as C does.  Other callables go the Python way. */
static inline int plain_callable(PyObject *o)
{
    return PyFunction_Check(o) || PyMethod_Check(o) || PyCFunction_Check(o);
}

/* The queue's Deque if it is ours, else NULL (another deque: Python's work). */
static inline DequeObject *our_deque(TopicQueueObject *tq)
{
    PyObject *dq = tq->dq;
    return dq != NULL && Py_IS_TYPE(dq, &DequeType) ? (DequeObject *)dq : NULL;
}

static PyObject *lane_produce(LaneObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *a[A_COUNT] = {NULL};
    TopicQueueObject *tq = NULL;
    PyObject *rec = NULL;
    long long ll;

    if (!self->fast || self->queues == NULL || nargs > A_COUNT)
        goto slow;
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t j = 0; j < nkw; j++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, j);
            int k = 0;
            while (k < A_COUNT && arg_names[k] != name)      /* interned at the call site */
                k++;
            if (k == A_COUNT || a[k] != NULL)
                goto slow;                  /* unknown, not interned, or given twice */
            a[k] = args[nargs + j];
        }
    }
    PyObject *topic = a[A_TOPIC];
    if (topic == NULL || !PyUnicode_CheckExact(topic))
        goto slow;
    PyObject *tqo = PyDict_GetItemWithError(self->queues, topic);       /* borrowed */
    if (tqo == NULL) {
        PyErr_Clear();                      /* the Python path repeats (and raises) it */
        goto slow;
    }
    if (!Py_IS_TYPE(tqo, &TopicQueueType))
        goto slow;
    tq = (TopicQueueObject *)tqo;
    Py_INCREF(tq);                          /* held: a GC below may run Python code */
    DequeObject *dq = our_deque(tq);
    if (dq == NULL)
        goto slow;

    PyObject *value = a[A_VALUE] ? a[A_VALUE] : Py_None;
    PyObject *key = a[A_KEY] ? a[A_KEY] : Py_None;
    PyObject *partition = a[A_PARTITION];
    PyObject *on_delivery = a[A_ON_DELIVERY] ? a[A_ON_DELIVERY] : Py_None;
    PyObject *timestamp = a[A_TIMESTAMP];
    PyObject *headers = a[A_HEADERS] ? a[A_HEADERS] : Py_None;
    PyObject *callback = a[A_CALLBACK] ? a[A_CALLBACK] : Py_None;
    if (headers != Py_None)
        goto slow;

    /* Producer.produce's short path: `key is None and value.__class__ is
     * bytes and partition == -1 and on_delivery is None and callback is None
     * and headers is None and not timestamp`. */
    if (key == Py_None && PyBytes_CheckExact(value) && on_delivery == Py_None &&
        callback == Py_None &&
        (partition == NULL || (exact_int(partition, &ll) && ll == -1)) &&
        (timestamp == NULL || timestamp == Py_None || timestamp == Py_False ||
         (exact_int(timestamp, &ll) && ll == 0))) {
        long long vlen = PyBytes_GET_SIZE(value);
        Py_ssize_t n = dq->len;
        if (vlen > self->max_value)                 /* MSG_SIZE_TOO_LARGE */
            goto slow;
        if (n == 0 || tq->bytes > self->max_queue_bytes)
            goto slow;                              /* arm, or recount (BufferError) */
        if (n >= self->batch_msgs && !tq->kicked)
            goto slow;                              /* wake the sender */
        if (n >= tq->room && (!recount_room(self, tq, n) || our_deque(tq) != dq || dq->len != n))
            goto slow;
        if (deque_push(dq, value) < 0)
            goto error;
        tq->bytes += vlen;
        Py_DECREF(tq);
        Py_RETURN_NONE;
    }

    /* Producer._produce_slow for the shapes it queues without converting. */
    if (value != Py_None && !PyBytes_CheckExact(value))
        goto slow;
    if (key != Py_None && !PyBytes_CheckExact(key))
        goto slow;
    long long part = -1;
    if (partition != NULL && !exact_int(partition, &part))
        goto slow;
    long long ts = 0;
    if (timestamp != NULL && (!exact_int(timestamp, &ts) || ts < 0))
        goto slow;
    PyObject *cb;
    if (on_delivery != Py_None) {
        if (!plain_callable(on_delivery))
            goto slow;
        cb = on_delivery;
    }
    else if (callback != Py_None) {
        if (!plain_callable(callback))
            goto slow;
        cb = callback;
    }
    else
        cb = Py_None;
    if (part != -1 && !(part >= 0 && part < tq->nparts))
        goto slow;                                  /* _UNKNOWN_PARTITION */
    long long size = (key == Py_None ? 0 : PyBytes_GET_SIZE(key)) +
                     (value == Py_None ? 0 : PyBytes_GET_SIZE(value));
    if (size + SPLIT_OVERHEAD > self->max_msg)      /* _RECORD_OVERHEAD: MSG_SIZE_TOO_LARGE */
        goto slow;
    /* The record first: allocating it may run a GC (and Python code), so the
     * queue is looked at only after. */
    rec = PyTuple_New(8);
    if (rec == NULL)
        goto error;
    PyObject *fields[8] = {value, key, partition ? partition : int_minus_one, cb,
                           timestamp ? timestamp : int_zero, Py_None, empty_bytes, int_zero};
    for (int i = 0; i < 8; i++) {
        Py_INCREF(fields[i]);
        PyTuple_SET_ITEM(rec, i, fields[i]);
    }
    dq = our_deque(tq);
    if (dq == NULL)
        goto slow;
    Py_ssize_t n = dq->len;
    if (n == 0 || tq->bytes + size > self->max_queue_bytes)
        goto slow;
    if ((n + 1 >= self->batch_msgs || tq->bytes + size >= self->batch_bytes) && !tq->kicked)
        goto slow;
    if (n >= tq->room && (!recount_room(self, tq, n) || our_deque(tq) != dq || dq->len != n))
        goto slow;
    if (deque_push(dq, rec) < 0)
        goto error;
    Py_DECREF(rec);
    tq->bytes += size;
    Py_DECREF(tq);
    Py_RETURN_NONE;

error:
    Py_XDECREF(rec);
    Py_XDECREF(tq);
    return NULL;

slow:
    Py_XDECREF(rec);
    Py_XDECREF(tq);
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pylog._fastprod.Lane was cleared");
        return NULL;
    }
    PyObject *slow = self->slow;
    Py_INCREF(slow);                /* the lane may be cleared during the call */
    PyObject *res = PyObject_Vectorcall(slow, args, nargs, kwnames);
    Py_DECREF(slow);
    return res;
}

static PyMethodDef lane_methods[] = {
    {"produce", (PyCFunction)(void (*)(void))lane_produce, METH_FASTCALL | METH_KEYWORDS,
     "produce($self, /, topic, value=None, key=None, partition=-1, on_delivery=None, "
     "timestamp=0, headers=None, callback=None)\n--\n\n"
     "Queue one record; raises BufferError when the local queue is full\n"
     "and KafkaException for oversized records and unknown partitions."},
    {NULL}
};

static PyMemberDef lane_members[] = {
    {"fast", T_BOOL, offsetof(LaneObject, fast), 0,
     "Producer._fast: False passes every call to the Python produce()"},
    {NULL}
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pylog._fastprod.Lane",
    .tp_basicsize = sizeof(LaneObject),
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lane(queues, slow, max_value, max_msg, max_queue_bytes, batch_msgs, batch_bytes,\n"
              "     sender=None, max_queue_msgs=0):\n"
              "a Producer's produce() in C (see csrc/fastprod.c).",
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_methods = lane_methods,
    .tp_members = lane_members,
    .tp_new = lane_new,
};

/* ======================================================================
 * module
 * ====================================================================== */
static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pylog._fastprod",
    "Producer.produce() and the queue drain in C (see csrc/fastprod.c).",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastprod(void)
{
    for (int i = 0; i < A_COUNT; i++) {
        if (arg_names[i] == NULL && (arg_names[i] = PyUnicode_InternFromString(ARG_NAMES[i])) == NULL)
            return NULL;
    }
    if (empty_bytes == NULL && (empty_bytes = PyBytes_FromStringAndSize("", 0)) == NULL)
        return NULL;
    if (int_zero == NULL && (int_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (int_minus_one == NULL && (int_minus_one = PyLong_FromLong(-1)) == NULL)
        return NULL;
    if (str_inflight == NULL && (str_inflight = PyUnicode_InternFromString("inflight")) == NULL)
        return NULL;
    if (str_reports == NULL && (str_reports = PyUnicode_InternFromString("reports")) == NULL)
        return NULL;
    if (collections_deque == NULL) {
        PyObject *mod = PyImport_ImportModule("collections");
        if (mod == NULL)
            return NULL;
        collections_deque = PyObject_GetAttrString(mod, "deque");
        Py_DECREF(mod);
        if (collections_deque == NULL)
            return NULL;
        if (!PyType_Check(collections_deque)) {
            Py_CLEAR(collections_deque);
            PyErr_SetString(PyExc_ImportError, "collections.deque is not a type");
            return NULL;
        }
    }
    if (PyType_Ready(&DequeType) < 0 || PyType_Ready(&TopicQueueType) < 0 ||
        PyType_Ready(&LaneType) < 0 || PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    PyTypeObject *types[] = {&DequeType, &TopicQueueType, &LaneType, &EncoderType};
    const char *names[] = {"Deque", "TopicQueue", "Lane", "Encoder"};
    for (int i = 0; i < 4; i++) {
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
