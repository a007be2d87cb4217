/* message_type.c -- pylog.message.Message in C.
 *
 * The same class as the Python one in pylog/message.py (the fallback when
 * pylog._fastmsg is missing or PYLOG_NO_FASTMSG is set): the constructor's
 * arguments and defaults, the accessors, set_key/set_value/set_headers,
 * len(), repr() and pickling behave alike (tests/test_message_type.py runs
 * one suite against both).  Read-only _topic, _offset, ... attributes stand
 * for the Python class's slots.
 *
 * Why C: a consumer makes one Message per record.  As a Python class with
 * __slots__ each one cost a heap-type allocation, eleven slot stores, an
 * int for its offset and subtype_dealloc on the way out; here the offset
 * stays an int64 until asked for and absent fields are NULL.
 *
 * Garbage collection: the type is GC-aware (a user can put anything in a
 * message with set_value), but decode_messages() does not track messages
 * whose fields are all atoms (str, int, bytes, None: no cycle can pass
 * through them), as CPython untracks such tuples; the setters track the
 * message again. */
#include "message_type.h"

#include <string.h>
#include <structmember.h>

#define OFFSET_INVALID (-1001)
#define TIMESTAMP_NOT_AVAILABLE 0
#define TIMESTAMP_CREATE_TIME 1

static PyObject *or_none(PyObject *o)
{
    return Py_NewRef(o != NULL ? o : Py_None);
}

static PyObject *get_offset(pl_Message *m)
{
    return m->offset != NULL ? Py_NewRef(m->offset) : PyLong_FromLongLong(m->offset_v);
}

static int msg_traverse(pl_Message *m, visitproc visit, void *arg)
{
    Py_VISIT(m->topic);
    Py_VISIT(m->partition);
    Py_VISIT(m->offset);
    Py_VISIT(m->key);
    Py_VISIT(m->value);
    Py_VISIT(m->headers);
    Py_VISIT(m->timestamp);
    Py_VISIT(m->error);
    Py_VISIT(m->latency);
    Py_VISIT(m->leader_epoch);
    return 0;
}

static int msg_clear(pl_Message *m)
{
    Py_CLEAR(m->topic);
    Py_CLEAR(m->partition);
    Py_CLEAR(m->offset);
    Py_CLEAR(m->key);
    Py_CLEAR(m->value);
    Py_CLEAR(m->headers);
    Py_CLEAR(m->timestamp);
    Py_CLEAR(m->error);
    Py_CLEAR(m->latency);
    Py_CLEAR(m->leader_epoch);
    return 0;
}

/* Freed messages of the exact type are kept for reuse, up to FREELIST_MAX
 * (about 2 MiB): a consumer drops one batch of messages and decodes the
 * next, so this saves the allocator both ways and keeps the messages out of
 * the collector's allocation count (which would start a collection every
 * 700 of them).  The list is linked through the topic field. */
#define FREELIST_MAX 32768
static pl_Message *free_list;
static int num_free;

pl_Message *pl_message_alloc(void)
{
    pl_Message *m = free_list;
    if (m == NULL)
        return PyObject_GC_New(pl_Message, &pl_MessageType);
    free_list = (pl_Message *)m->topic;
    num_free--;
    Py_SET_REFCNT(m, 1);            /* untracked, of pl_MessageType, as it was freed */
    return m;
}

/* tp_alloc: as PyType_GenericAlloc (zeroed, tracked), from the free list
 * when it can, so that messages made by the constructor (delivery reports,
 * events) reuse what they free too. */
static PyObject *msg_alloc(PyTypeObject *type, Py_ssize_t nitems)
{
    if (type != &pl_MessageType || free_list == NULL)
        return PyType_GenericAlloc(type, nitems);
    pl_Message *m = pl_message_alloc();
    memset((char *)m + sizeof(PyObject), 0, sizeof(pl_Message) - sizeof(PyObject));
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

static void msg_dealloc(pl_Message *m)
{
    /* (for a Python subclass, subtype_dealloc drops the type's reference) */
    PyObject_GC_UnTrack(m);
    msg_clear(m);
    if (Py_IS_TYPE(m, &pl_MessageType) && num_free < FREELIST_MAX) {
        m->topic = (PyObject *)free_list;
        free_list = m;
        num_free++;
        return;
    }
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* Store o (a new reference, or NULL for None) in *slot. */
static void put(PyObject **slot, PyObject *o)
{
    PyObject *old = *slot;
    *slot = (o == Py_None) ? NULL : o;
    if (o == Py_None)
        Py_DECREF(o);
    Py_XDECREF(old);
}

static int msg_init(pl_Message *m, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"topic", "partition", "offset", "key", "value", "headers",
                             "timestamp", "error", "tstype", "latency", "leader_epoch", NULL};
    PyObject *topic = Py_None, *partition = NULL, *offset = NULL, *key = Py_None,
             *value = Py_None, *headers = Py_None, *timestamp = NULL, *error = Py_None,
             *latency = Py_None, *leader_epoch = Py_None;
    int tstype = TIMESTAMP_CREATE_TIME;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOOOOOOOiOO:Message", kwlist, &topic,
                                     &partition, &offset, &key, &value, &headers, &timestamp,
                                     &error, &tstype, &latency, &leader_epoch))
        return -1;
    PyObject *partition_o = partition != NULL ? Py_NewRef(partition) : PyLong_FromLong(-1);
    PyObject *timestamp_o = timestamp != NULL ? Py_NewRef(timestamp) : PyLong_FromLong(-1);
    if (partition_o == NULL || timestamp_o == NULL)
        goto fail;
    /* tstype, as the Python class: NOT_AVAILABLE unless timestamp >= 0 */
    if (timestamp_o == Py_None) {
        tstype = TIMESTAMP_NOT_AVAILABLE;
    } else {
        PyObject *zero = PyLong_FromLong(0);
        int ge = zero != NULL ? PyObject_RichCompareBool(timestamp_o, zero, Py_GE) : -1;
        Py_XDECREF(zero);
        if (ge < 0)
            goto fail;
        if (!ge)
            tstype = TIMESTAMP_NOT_AVAILABLE;
    }
    int64_t offset_v = OFFSET_INVALID;
    PyObject *offset_o = NULL;
    if (offset != NULL && PyLong_CheckExact(offset)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(offset, &overflow);
        if (v == -1 && PyErr_Occurred())
            goto fail;
        if (overflow)
            offset_o = Py_NewRef(offset);
        else
            offset_v = (int64_t)v;
    } else if (offset != NULL) {
        offset_o = Py_NewRef(offset);           /* kept as given, like the Python class */
    }
    put(&m->topic, Py_NewRef(topic));
    put(&m->partition, partition_o);
    Py_XSETREF(m->offset, offset_o);           /* (None too: NULL means offset_v) */
    put(&m->key, Py_NewRef(key));
    put(&m->value, Py_NewRef(value));
    put(&m->headers, Py_NewRef(headers));
    put(&m->timestamp, timestamp_o);
    put(&m->error, Py_NewRef(error));
    put(&m->latency, Py_NewRef(latency));
    put(&m->leader_epoch, Py_NewRef(leader_epoch));
    m->offset_v = offset_v;
    m->tstype = tstype;
    return 0;
fail:
    Py_XDECREF(partition_o);
    Py_XDECREF(timestamp_o);
    return -1;
}

/* ---- accessors ---- */
/* A field's method (m.topic()) and the Python class's slot name for it
 * (m._topic, read-only). */
#define FIELD(name, expr) \
    static PyObject *m_##name(pl_Message *m, PyObject *unused) { return (expr); } \
    static PyObject *g_##name(pl_Message *m, void *closure) { return (expr); }
FIELD(topic, or_none(m->topic))
FIELD(partition, or_none(m->partition))
FIELD(offset, get_offset(m))
FIELD(key, or_none(m->key))
FIELD(value, or_none(m->value))
FIELD(error, or_none(m->error))
FIELD(latency, or_none(m->latency))
FIELD(leader_epoch, or_none(m->leader_epoch))
#undef FIELD
static PyObject *g_headers(pl_Message *m, void *c) { return or_none(m->headers); }
static PyObject *g_timestamp(pl_Message *m, void *c) { return or_none(m->timestamp); }
static PyObject *g_tstype(pl_Message *m, void *c) { return PyLong_FromLong(m->tstype); }

static PyObject *m_headers(pl_Message *m, PyObject *unused)
{
    /* [(str, bytes or None)], or None when the record has none (`_headers or None`) */
    if (m->headers == NULL)
        Py_RETURN_NONE;
    int truth = PyObject_IsTrue(m->headers);
    if (truth < 0)
        return NULL;
    return truth ? Py_NewRef(m->headers) : Py_NewRef(Py_None);
}

static PyObject *m_timestamp(pl_Message *m, PyObject *unused)
{
    return Py_BuildValue("(iN)", m->tstype, or_none(m->timestamp));
}

static PyObject *set_field(pl_Message *m, PyObject **slot, PyObject *v)
{
    put(slot, Py_NewRef(v));
    if (!PyObject_GC_IsTracked((PyObject *)m))
        PyObject_GC_Track(m);
    Py_RETURN_NONE;
}

static PyObject *m_set_key(pl_Message *m, PyObject *v) { return set_field(m, &m->key, v); }
static PyObject *m_set_value(pl_Message *m, PyObject *v) { return set_field(m, &m->value, v); }
static PyObject *m_set_headers(pl_Message *m, PyObject *v) { return set_field(m, &m->headers, v); }

static Py_ssize_t msg_len(pl_Message *m)
{
    return m->value == NULL ? 0 : PyObject_Size(m->value);
}

static PyObject *msg_repr(pl_Message *m)
{
    if (m->error != NULL)
        return PyUnicode_FromFormat("Message(error=%S)", m->error);
    PyObject *value = or_none(m->value), *offset = get_offset(m), *r = NULL;
    if (offset == NULL)
        goto out;
    if (m->value != NULL) {
        Py_ssize_t n = PyObject_Size(m->value);
        if (n < 0)
            goto out;
        if (n > 40) {               /* value[:40] + b"..." */
            PyObject *head = PySequence_GetSlice(m->value, 0, 40), *dots = NULL;
            if (head != NULL && (dots = PyBytes_FromString("...")) != NULL) {
                Py_SETREF(value, PyNumber_Add(head, dots));
            }
            Py_XDECREF(head);
            Py_XDECREF(dots);
            if (value == NULL || PyErr_Occurred())
                goto out;
        }
    }
    r = PyUnicode_FromFormat("Message(topic=%R, partition=%S, offset=%S, key=%R, value=%R)",
                             m->topic ? m->topic : Py_None, m->partition ? m->partition : Py_None,
                             offset, m->key ? m->key : Py_None, value);
out:
    Py_XDECREF(value);
    Py_XDECREF(offset);
    return r;
}

static PyObject *m_reduce(pl_Message *m, PyObject *unused)
{
    PyObject *offset = get_offset(m);
    if (offset == NULL)
        return NULL;
#define N(f) (m->f ? m->f : Py_None)
    PyObject *r = Py_BuildValue("(O(OOOOOOOOiOO))", (PyObject *)Py_TYPE(m), N(topic), N(partition),
                                offset, N(key), N(value), N(headers), N(timestamp),
                                N(error), m->tstype, N(latency), N(leader_epoch));
#undef N
    Py_DECREF(offset);
    return r;
}

static PyMethodDef msg_methods[] = {
    {"topic", (PyCFunction)m_topic, METH_NOARGS, NULL},
    {"partition", (PyCFunction)m_partition, METH_NOARGS, NULL},
    {"offset", (PyCFunction)m_offset, METH_NOARGS, NULL},
    {"key", (PyCFunction)m_key, METH_NOARGS, NULL},
    {"value", (PyCFunction)m_value, METH_NOARGS, NULL},
    {"headers", (PyCFunction)m_headers, METH_NOARGS,
     "[(str, bytes or None)], or None when the record has no headers."},
    {"timestamp", (PyCFunction)m_timestamp, METH_NOARGS,
     "(timestamp type, milliseconds since the epoch)."},
    {"error", (PyCFunction)m_error, METH_NOARGS, NULL},
    {"latency", (PyCFunction)m_latency, METH_NOARGS, NULL},
    {"leader_epoch", (PyCFunction)m_leader_epoch, METH_NOARGS, NULL},
    {"set_key", (PyCFunction)m_set_key, METH_O, NULL},
    {"set_value", (PyCFunction)m_set_value, METH_O, NULL},
    {"set_headers", (PyCFunction)m_set_headers, METH_O, NULL},
    {"__reduce__", (PyCFunction)m_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

#define SLOT(name) {"_" #name, (getter)g_##name, NULL, NULL, NULL}
static PyGetSetDef msg_getset[] = {
    SLOT(topic), SLOT(partition), SLOT(offset), SLOT(key), SLOT(value), SLOT(headers),
    SLOT(timestamp), SLOT(tstype), SLOT(error), SLOT(latency), SLOT(leader_epoch),
    {NULL, NULL, NULL, NULL, NULL},
};
#undef SLOT

static PySequenceMethods msg_as_sequence = {
    .sq_length = (lenfunc)msg_len,
};

PyTypeObject pl_MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pylog.message.Message",
    .tp_doc = "One record as handed to the application (or a delivery report, or an\n"
              "event carrying only error()).",
    .tp_basicsize = sizeof(pl_Message),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_alloc = msg_alloc,
    .tp_init = (initproc)msg_init,
    .tp_dealloc = (destructor)msg_dealloc,
    .tp_traverse = (traverseproc)msg_traverse,
    .tp_clear = (inquiry)msg_clear,
    .tp_repr = (reprfunc)msg_repr,
    .tp_as_sequence = &msg_as_sequence,
    .tp_methods = msg_methods,
    .tp_getset = msg_getset,
};

int pl_message_type_ready(void)
{
    return PyType_Ready(&pl_MessageType);
}
