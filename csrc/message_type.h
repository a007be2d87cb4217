/* message_type.h -- pylog.message.Message as a C type (csrc/message_type.c).
 *
 * Field conventions, shared with decode_messages() in fastmsg.c, which fills
 * instances directly:
 *   - key, value, headers, error, latency, leader_epoch: NULL means None;
 *   - offset: the int64 offset_v unless offset (the object given to the
 *     constructor, when it is not an int64) is set; decoded messages carry
 *     offset_v only, and offset() makes the int when asked;
 *   - topic, partition, timestamp: always set (shared between the messages
 *     of a batch);
 *   - tstype: TIMESTAMP_NOT_AVAILABLE (0), CREATE_TIME (1), LOG_APPEND_TIME (2).
 */
#ifndef PYLOG_MESSAGE_TYPE_H
#define PYLOG_MESSAGE_TYPE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    PyObject *topic, *partition, *offset, *key, *value, *headers, *timestamp;
    PyObject *error, *latency, *leader_epoch;
    int64_t offset_v;
    int tstype;
} pl_Message;

extern PyTypeObject pl_MessageType;

/* A new message (reference count 1, untracked, fields uninitialised: the
 * caller sets every one), or NULL with MemoryError set. */
pl_Message *pl_message_alloc(void);

/* Ready the type; 0 or -1 with an exception set. */
int pl_message_type_ready(void);

#endif
